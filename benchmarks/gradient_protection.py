"""What the owner's extraction defences cost the customer: the demo fine-tune (digits, built-in
MNIST-pretrained graytune-tiny, 100 steps of 32) once per graybox key, each key with other
gradient protection.

    python benchmarks/gradient_protection.py                  # ~6 minutes on 2 busy cores
    python benchmarks/gradient_protection.py --steps 30 --out protection

One owner server, one key file made with `graytune-server keys create --gradient-clip X
--gradient-noise Y`: no protection; each sample's returned gradient clipped to the median
per-sample pixel-gradient norm or to a tenth of it; Gaussian noise of 1, 10, 100 and 1000 times
the pixel gradient's per-element RMS; and both together. The server applies the same numbers
to the text shift and extra tokens, whose gradients are larger (norms about 5 and 0.4 against
0.03). Every key runs the same training (`graytune.client.train`: same seed, data order, steps,
batch, learning rate). The driver first prints the pixel-gradient scale the unprotected key
gets, next to the scale the levels assume. The table: zero-shot and fine-tuned R@1 both ways,
and the fraction of the unprotected run's image->text gain over zero-shot that each key keeps.
The output adapters and logit scale train on the customer's side with exact gradients, so no
protection removes their share of the gain. Noise is drawn by the server from an unpredictable
seed: noisy rows vary from run to run. Writes OUT/gradient_protection.json and .png (--out,
default benchmarks/results).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from graytune.openmp import wait_passively

wait_passively()  # client and server share the cores
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

from graytune.client.data.batches import batch_indices  # noqa: E402
from graytune.client.demo.digits import write_digits  # noqa: E402
from graytune.client.methods.graybox.config import GrayboxConfig  # noqa: E402
from graytune.client.methods.graybox.model import GrayboxCLIP  # noqa: E402
from graytune.client.methods.graybox.options import DGAOptions  # noqa: E402
from graytune.client.tasks.retrieval.data import collate  # noqa: E402
from graytune.client.tasks.retrieval.task import contrastive_step_loss, load_dataset  # noqa: E402
from graytune.client.training.loop import TrainConfig, train  # noqa: E402
from graytune.client.training.run_dir import RunDir  # noqa: E402
from graytune.client.transport.local_server import LocalServer, server_command  # noqa: E402
from graytune.client.transport.oracle_client import OracleClient  # noqa: E402

from evidence.output import RESULTS, plt, save_results  # noqa: E402

# The pixel gradient of the demo's first batches with no protection (the run prints both again):
PIXEL_NORM = 0.03  # median per-sample L2 norm, over 3 x 32 x 32 values
PIXEL_RMS = 6e-4  # per-element root mean square
KEYS = {  # label: (clip norm, noise std); the same numbers also bound the text shift and tokens
    "none": (None, None),
    "clip 1x": (PIXEL_NORM, None),
    "clip 0.1x": (PIXEL_NORM / 10, None),
    "noise 1x": (None, PIXEL_RMS),
    "noise 10x": (None, PIXEL_RMS * 10),
    "noise 100x": (None, PIXEL_RMS * 100),
    "noise 1000x": (None, PIXEL_RMS * 1000),
    "clip 1x + noise 1x": (PIXEL_NORM, PIXEL_RMS),
    "clip 0.1x + noise 1x": (PIXEL_NORM / 10, PIXEL_RMS),
}
METRICS = ("image_to_text_R@1", "text_to_image_R@1")
# The protection measured is the per-pixel gradient's, so the images go in pixel mode: in the
# frugal image call (graytune's default where it can) the same clip and noise would apply to the
# pixel adapter's parameters' gradients instead, a measurement of its own.
WIRE = "pixels"


def create_keys(key_file: Path, labels) -> dict:
    """{label: secret}: one graybox key per protection level, as an owner makes them."""
    secrets = {}
    for label in labels:
        clip, noise = KEYS[label]
        flags = ["--gradient-clip", str(clip)] * (clip is not None) + ["--gradient-noise", str(noise)] * (
            noise is not None
        )
        secrets[label] = subprocess.run(
            server_command() + ["keys", "--file", str(key_file), "create", "--tier", "graybox", *flags],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return secrets


def pixel_gradient_scale(oracle: OracleClient, cfg: TrainConfig, batches: int = 3) -> tuple:
    """(median per-sample L2 norm, per-element RMS) of the pixel gradients Backward returns
    for the training's first batches, through the untrained adapters."""
    returned = []
    backward = oracle.backward

    def recording_backward(*args, **kwargs):
        returned.append(backward(*args, **kwargs))
        return returned[-1]

    oracle.backward = recording_backward  # this instance only, for these batches
    try:
        dataset = load_dataset(cfg.train_data, oracle, **cfg.csv.reader("img_key", "caption_key", "separator"))
        torch.manual_seed(cfg.seed)
        model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
        for step in range(batches):
            pixels, captions = collate(
                [dataset[i] for i in batch_indices(len(dataset), cfg.batch_size, cfg.seed, step)]
            )
            contrastive_step_loss(model, pixels, captions).backward()
    finally:
        del oracle.backward  # the instance attribute: back to the class's method
    grads = torch.cat([g["pixels"].flatten(1) for g in returned if "pixels" in g])  # (N, 3 H W)
    return grads.norm(dim=1).median().item(), grads.pow(2).mean().sqrt().item()


def run(endpoint: str, secret: str, cfg: TrainConfig) -> dict:
    """Trains with one key; -> {"zero_shot": metrics, "fine_tuned": metrics}."""
    with OracleClient(endpoint, api_key=secret, image_wire=WIRE) as oracle:
        fine_tuned = train(oracle, cfg, overwrite=True, progress=False)
    records = RunDir(cfg.output_dir).records()
    return {"zero_shot": next(r for r in records if r["kind"] == "zero_shot"), "fine_tuned": fine_tuned}


def gain_kept(result: dict, baseline: dict, metric: str) -> float | None:
    """Fine-tuned minus zero-shot, as a fraction of the unprotected run's gain (None: it had none)."""
    gain = baseline["fine_tuned"][metric] - baseline["zero_shot"][metric]
    return None if gain == 0 else (result["fine_tuned"][metric] - result["zero_shot"][metric]) / gain


def report(results: dict) -> None:
    """The table. Gain kept is image->text's: text->image ranks only the 10 distinct validation
    captions, so its R@1 moves in steps of 0.1, too coarse for a ratio (the JSON has both)."""
    base = results["none"]
    print(f"\n{'key':<22}{'clip':>7}{'noise':>8}  {'zero-shot R@1':>14}  {'fine-tuned R@1':>14}  {'gain kept':>9}")
    print(f"{'':<37}" + f"  {'i->t':>7}{'t->i':>7}" * 2 + f"  {'i->t':>9}")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"
    for label, r in results.items():
        clip, noise = KEYS[label]
        zs, ft = ("".join(f"{r[k][m]:>7.3f}" for m in METRICS) for k in ("zero_shot", "fine_tuned"))
        print(f"{label:<22}{fmt(clip):>7}{fmt(noise):>8}  {zs}  {ft}  {fmt(gain_kept(r, base, METRICS[0])):>9}")


def figure(keys: dict) -> plt.Figure:
    """Gain kept per key, image->text and text->image."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(METRICS)
    for k, metric in enumerate(METRICS):
        ax.bar(
            [i + (k - (len(METRICS) - 1) / 2) * width for i in range(len(keys))],
            [r["gain_kept"][metric] or 0.0 for r in keys.values()],
            width,
            label=metric,
        )  # None: no gain
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xticks(range(len(keys)), list(keys), rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="fraction of the unprotected gain kept", title="what gradient protection costs the demo fine-tune")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def measure(workdir: Path, labels, steps: int, batch_size: int, lr: float) -> dict:
    """Writes the data and the key file, starts the server, trains once per key."""
    data = write_digits(workdir / "data")
    secrets = create_keys(workdir / "keys.json", labels)
    config = lambda label: TrainConfig(
        train_data=str(data["train"]),
        val_data=str(data["val"]),
        output_dir=str(workdir / "runs" / label.replace(" ", "_")),
        batch_size=batch_size,
        eval_every=steps,
        save_every=steps,
        options=DGAOptions(steps=steps, lr=lr),
    )
    # Building the MNIST-pretrained weights the first time takes minutes on busy cores.
    with LocalServer(
        ["--plaintext", "--keys", str(workdir / "keys.json"), "--pretrained", "mnist", "--log-level", "WARNING"],
        startup_timeout=1800,
    ) as server:
        with OracleClient(server.endpoint, api_key=secrets["none"], image_wire=WIRE) as oracle:
            norm, rms = pixel_gradient_scale(oracle, config("none"))
        print(
            f"pixel gradient, no protection: median per-sample norm {norm:.3g} (levels assume {PIXEL_NORM}), "
            f"per-element RMS {rms:.3g} (levels assume {PIXEL_RMS})",
            flush=True,
        )
        results = {}
        for label, secret in secrets.items():
            print(f"key: {label}", flush=True)
            results[label] = run(server.endpoint, secret, config(label))
    return {"pixel_norm": norm, "pixel_rms": rms, "results": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="training steps per key (the demo's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--keys", default=",".join(KEYS), help="protection levels to run, comma-separated (with 'none')")
    p.add_argument("--workdir", type=Path, help="keep data, key file and runs here (default: a temporary directory)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for gradient_protection.json and .png")
    args = p.parse_args()
    labels = args.keys.split(",")
    if "none" not in labels or not set(labels) <= set(KEYS):
        p.error(f"--keys: 'none' and any of {list(KEYS)}, got {labels}")
    with tempfile.TemporaryDirectory(prefix="gradient-protection-") as tmp:
        measured = measure(args.workdir or Path(tmp), labels, args.steps, args.batch_size, args.lr)
    results = measured["results"]
    report(results)
    keys = {
        label: {
            "clip": KEYS[label][0],
            "noise": KEYS[label][1],
            **r,
            "gain_kept": {m: gain_kept(r, results["none"], m) for m in METRICS},
        }
        for label, r in results.items()
    }
    written = save_results(
        args.out,
        "gradient_protection",
        {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "pixel_norm": measured["pixel_norm"],
            "pixel_rms": measured["pixel_rms"],
            "keys": keys,
        },
        lambda: figure(keys),
    )
    print(f"written to {written} and its .png")


if __name__ == "__main__":
    main()
