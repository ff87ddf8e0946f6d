"""What the wire costs: one gray-box training step through the server over loopback, divided
by the same step with the backbone in-process. Interleaved, medians. Per model, method and batch.

    python benchmarks/step_overhead.py                       # DGA on both models, 3 runs each, ~13 min on 2 cores
    python benchmarks/step_overhead.py --models small-224 --methods dga,input,lga --batches 8,32 --runs 2
    python benchmarks/step_overhead.py --data --loader-workers 2   # `graytune train`'s whole step

Methods: dga (input and output adapters), input (input adapters only: the same tensors on the
wire, less client work), lga (DGA with deep prompts at every layer the server offers). Output
adapters alone are not measured: with frozen inputs their steps are answered by the client's
embedding cache after the first epoch, with no call at all.

With `--data`, each step also loads its batch as `graytune train` does: JPEG files (256 × 256,
built once by this script from scikit-learn's digits) decoded and resized to 224 in DataLoader
workers ahead of the step (`--loader-workers`, graytune's `--workers`), both variants with the
same pipeline; the step is the loop's own `train_step`. Without it, the batch is fixed pixels.

Each variant runs in its own worker process, so each gets the settings it would have in real
use: the in-process step OpenMP's defaults; the remote client OMP_WAIT_POLICY=PASSIVE (it waits
while the server computes on the same cores, as `graytune` sets it). The driver starts the
server, sends the workers one step at a time in rotating order, and prints median step times,
their ratios (and the spread of per-round ratios), where a remote step's time goes (trainer,
server device, wire), the tensor bytes each way per step, the bytes really on the wire (the
kernel's TCP counters, via `ss`) over the step's minimum (its tensors at the wire dtype and its
captions), and peak memory. Each model is measured --runs times, each with a fresh server and
workers, and the ratios' spread over runs is printed. Writes OUT/step_overhead.json and .png
(--out, default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.options import DGAOptions, LGAOptions
from graytune.openmp import wait_passively
from graytune.pixel_adapter import normalise

from evidence.memory import status_bytes
from evidence.output import RESULTS, plt, save_results
from evidence.wire import tcp_bytes

CLIP_NORMALISATION = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # mean, std
MODELS = {  # name: (OpenCLIP architecture, image size, default batch, default repetitions)
    "small-224": ("graytune-small-224", 224, 32, 15),
    "vit-b-32": ("ViT-B-32", 224, 16, 5),
    "vit-l-14": ("ViT-L-14", 224, 16, 3),  # scripts/gpu_check.sh's
    "tiny": ("graytune-tiny", 32, 8, 5),  # the smoke test's
}
METHODS = {  # name: the step's modules (LGA's depth: every layer the backbone offers)
    "dga": DGAOptions(),
    "input": DGAOptions(adapters="input"),
    "lga": LGAOptions(),
}
# Remote variants: (tensors' dtype on the wire, image wire). "pixels": the pixel adapter runs in
# the trainer and its float output goes up, the pixel gradient comes back; "frugal": uint8 pixels
# and the adapter's parameters go up, the server runs the adapter, its parameters' gradients
# come back (transport/remote.py).
WIRE = (("float32", "pixels"), ("bfloat16", "pixels"), ("float32", "frugal"), ("bfloat16", "frugal"))
REFERENCE = "remote float32 pixels"  # what bytes are compared with


# -- workers ---------------------------------------------------------------------------------
def build_step(args):
    """graytune.client.training.loop's step (train_step) on the DGA adapters, with the batches
    of `graytune train`'s data pipeline (--data) or fixed pixels."""
    from graytune.client.methods.gradient import cosine_with_warmup, train_step
    from graytune.client.methods.graybox.model import GrayboxCLIP
    from graytune.client.tasks.retrieval.task import RetrievalTask

    torch.manual_seed(0)
    if args.data_csv:
        batches = iter(data_batches(args))
    else:
        eight_bit = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
        pixels = normalise(eight_bit, *CLIP_NORMALISATION)  # (B, 3, H, W), as graytune preprocesses images
        captions = [f"a photo of item number {i}." for i in range(args.batch)]
        batches = iter(lambda: (pixels, captions), None)
    options = METHODS[args.method]
    if args.worker == "in-process":
        from graytune.server.compute.backbone import BackboneSource, load_backbone

        backbone = load_backbone(BackboneSource(model=args.model))
        deep = {}
        if isinstance(options, LGAOptions):  # what for_oracle reads from Describe
            deep = {
                "deep_prompt_depth": min(backbone.image.prompt_depth, backbone.text.prompt_depth),
                "deep_prompt_tokens": options.deep_prompt_tokens,
            }
        config = GrayboxConfig(
            embed_dim=backbone.embed_dim,
            token_width=backbone.text.token_width,
            image_token_width=backbone.image.token_width,
            backbone_name=backbone.name,
            backbone_sha256=backbone.sha256,
            method="graybox-lga" if deep else "graybox-dga",
            adapters=options.adapters,
            pixel_layers=options.pixel_layers,
            pixel_channels=options.pixel_channels,
            extra_tokens=options.extra_tokens,
            **deep,
        )
        model = GrayboxCLIP(config, oracle=None)
        model.image_tower = LocalImageTower(backbone)
        model.text_tower = LocalTextTower(backbone)
        oracle = None
    else:
        from graytune.client.transport.oracle_client import OracleClient

        oracle = OracleClient(args.endpoint, wire_dtype=getattr(torch, args.wire_dtype), image_wire=args.image_wire)
        model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle, options), oracle)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(10, 10**6))
    task = RetrievalTask(oracle)

    def step() -> int:
        """One step -> the bytes of its captions (sent as text, the rest of the minimum is tensors)."""
        batch = next(batches)
        train_step(task.loss, model, batch, optimizer, schedule)
        return sum(len(c.encode()) for c in batch[1])

    return step, oracle


def data_batches(args):
    """`graytune train`'s batches of the JPEG data set, made by DataLoader workers."""
    from graytune.client.data.batches import step_batches
    from graytune.client.data.preprocess import Preprocess
    from graytune.client.tasks.retrieval.data import ImageCaptionDataset

    # The backbone's preprocessing (OpenCLIP's defaults for these models), as Describe reports it.
    preprocess = Preprocess(args.size, args.size, *CLIP_NORMALISATION)
    dataset = ImageCaptionDataset(args.data_csv, preprocess)
    return step_batches(dataset, args.batch, seed=0, first=0, end=10**6, workers=args.loader_workers)


def write_jpeg_data(folder: Path, count: int = 512) -> Path:
    """scikit-learn's digits as 256 x 256 colour JPEGs with captions (once); -> the CSV."""
    from PIL import Image
    from sklearn.datasets import load_digits

    csv = folder / "train.csv"
    if csv.exists():
        return csv
    (folder / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = torch.Generator().manual_seed(0)
    rows = []
    for i in range(count):
        ink = torch.from_numpy(digits.images[i] / 16).float()  # (8, 8)
        colour = torch.rand(3, generator=rng)
        image = (ink[None] * colour[:, None, None] * 255).byte().permute(1, 2, 0).numpy()  # (8, 8, 3)
        Image.fromarray(image).resize((256, 256), Image.Resampling.BICUBIC).save(
            folder / "images" / f"{i}.jpg", quality=90
        )
        rows.append(f"images/{i}.jpg\ta photo of the digit {digits.target[i]}.\n")
    csv.write_text("filepath\ttitle\n" + "".join(rows))
    return csv


class LocalImageTower(torch.nn.Module):
    """The backbone's image tower in this process: the baseline the wire is measured against."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor, deep_prompts=None, adapter=None) -> torch.Tensor:
        return self.backbone.encode_image(pixels if adapter is None else adapter(pixels), deep_prompts)


class LocalTextTower(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, texts, shift=None, extra_tokens=None, deep_prompts=None) -> torch.Tensor:
        k = 0 if extra_tokens is None else extra_tokens.shape[0]
        return self.backbone.encode_text(self.backbone.text.tokenize(list(texts), k), shift, extra_tokens, deep_prompts)


def run_worker(args) -> None:
    step, oracle = build_step(args)
    port = args.endpoint and int(args.endpoint.rsplit(":", 1)[1])
    counters = ("bytes_sent", "bytes_received", "call_seconds", "device_seconds")
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        before = [getattr(oracle, c, 0) for c in counters]
        tcp_before = oracle and tcp_bytes(os.getpid(), port)
        start = time.perf_counter()
        text_bytes = step()
        seconds = time.perf_counter() - start
        tcp_after = oracle and tcp_bytes(os.getpid(), port)
        up, down, in_calls, device = [getattr(oracle, c, 0) - b for c, b in zip(counters, before)]
        wire = [a - b for a, b in zip(tcp_after, tcp_before)] if tcp_before and tcp_after else [None, None]
        print(
            json.dumps(
                {
                    "seconds": seconds,
                    "up": up,
                    "down": down,
                    "device": device,
                    "transport": in_calls - device,
                    "client": seconds - in_calls,
                    "minimum_bytes": up + down + text_bytes,
                    "wire_up": wire[0],
                    "wire_down": wire[1],
                    "peak_rss": status_bytes(os.getpid(), "VmHWM"),
                }
            ),
            flush=True,
        )


# -- driver ----------------------------------------------------------------------------------
class Worker:
    def __init__(self, label: str, argv, env):
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *argv], env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"worker {label} failed to start")
        self.results = []

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        result = json.loads(self.proc.stdout.readline())
        self.results.append(result)
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def bench_case(name: str, method: str, batch: int, reps: int, warmup: int, data: list) -> dict:
    """One run of one case (model, method, batch): a fresh server and workers."""
    from graytune.client.transport.local_server import LocalServer

    arch, size, _, _ = MODELS[name]
    common = ["--model", arch, "--size", str(size), "--batch", str(batch), "--method", method, *data]
    with LocalServer(
        ["--dev", "--plaintext", "--tier", "graybox-plus", "--model", arch, "--log-level", "WARNING"]
    ) as server:
        workers = [Worker("in-process", ["--worker", "in-process", *common], dict(os.environ))]
        for dtype, image_wire in WIRE:
            env = wait_passively(dict(os.environ))
            remote = ["--worker", "remote", "--endpoint", server.endpoint, "--wire-dtype", dtype]
            workers.append(Worker(f"remote {dtype} {image_wire}", [*remote, "--image-wire", image_wire, *common], env))
        try:
            for _ in range(warmup):
                for w in workers:
                    w.step()
            for w in workers:
                w.results.clear()
            for rep in range(reps):  # rotate the order so no variant always follows another
                for w in workers[rep % len(workers) :] + workers[: rep % len(workers)]:
                    w.step()
            server_peak = status_bytes(server.process.pid, "VmHWM")
        finally:
            for w in workers:
                w.close()
    base = workers[0].results
    reference = next(w for w in workers if w.label == REFERENCE).results
    rows = []
    for w in workers:
        med = lambda key: statistics.median(r[key] for r in w.results)
        # Paired by round: each step over the in-process step of its own round, robust to drift.
        paired = sorted(r["seconds"] / b["seconds"] for r, b in zip(w.results, base))
        quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
        rows.append(
            {
                "variant": w.label,
                "median_s": med("seconds"),
                "ratio": med("seconds") / statistics.median(b["seconds"] for b in base),
                "paired_q1": quartiles[0],
                "paired_q3": quartiles[-1],
                "client_s": med("client"),
                "device_s": med("device"),
                "transport_s": med("transport"),
                "up_bytes": w.results[-1]["up"],
                "down_bytes": w.results[-1]["down"],
                # This step's tensor bytes both ways ÷ the float32 pixel-mode step's.
                "bytes_ratio": (w.results[-1]["up"] + w.results[-1]["down"])
                / (reference[-1]["up"] + reference[-1]["down"]),
                "wire_over_minimum": wire_over_minimum(w.results),
            }
        )
    return {
        "model": name,
        "arch": arch,
        "method": method,
        "batch": batch,
        "reps": reps,
        "rows": rows,
        "data": bool(data),
        "server_peak_rss": server_peak,
        "in_process_peak_rss": base[-1]["peak_rss"],
    }


def wire_over_minimum(steps: list):
    """Median over steps of TCP bytes both ways ÷ the step's minimum (its tensors at the wire
    dtype and its captions' UTF-8); None in-process or without `ss`."""
    ratios = [(r["wire_up"] + r["wire_down"]) / r["minimum_bytes"] for r in steps if r.get("wire_up") is not None]
    return statistics.median(ratios) if ratios else None


def report(result: dict) -> None:
    batches = "JPEG files through the DataLoader" if result["data"] else "fixed pixels"
    print(
        f"\n{result['model']} ({result['arch']}, {result['method']}, batch {result['batch']} of {batches}, "
        f"{result['reps']} interleaved reps)"
    )
    print(
        f"  {'variant':<24}{'step s':>8}{'ratio':>7}{'paired IQR':>14}{'client s':>10}{'server s':>10}"
        f"{'wire s':>8}{'MB up':>8}{'MB down':>9}{'bytes ratio':>12}{'wire ÷ min':>12}"
    )
    for r in result["rows"]:
        remote = r["variant"] != "in-process"
        split = (
            f"{r['client_s']:>10.3f}{r['device_s']:>10.3f}{r['transport_s']:>8.3f}"
            if remote
            else f"{'':>10}{'':>10}{'':>8}"
        )
        print(
            f"  {r['variant']:<24}{r['median_s']:>8.3f}{r['ratio']:>7.3f}"
            f"{r['paired_q1']:>8.3f}-{r['paired_q3']:.3f}{split}"
            f"{r['up_bytes'] / 1e6:>8.2f}{r['down_bytes'] / 1e6:>9.2f}"
            + (f"{r['bytes_ratio']:>12.3f}" if remote else f"{'':>12}")
            + (f"{r['wire_over_minimum']:>12.4f}" if r["wire_over_minimum"] else "")
        )
    print(
        f"  peak RSS: server {result['server_peak_rss'] / 2**20:.0f} MiB, "
        f"in-process trainer {result['in_process_peak_rss'] / 2**20:.0f} MiB"
    )
    print(
        "  client s: the trainer's own work; server s: the server's device thread; "
        "wire s: the rest of the calls (serialisation, gRPC, queueing); MB: tensor bytes; bytes ratio: "
        f"tensor bytes both ways ÷ {REFERENCE}'s; wire ÷ min: TCP bytes both ways ÷ the step's tensors and captions"
    )


def across_runs(runs: list) -> dict:
    """Per variant, its ratio in each run (a fresh server and workers each time) and their spread."""
    variants = [r["variant"] for r in runs[0]["rows"]]
    ratios = {v: [next(r["ratio"] for r in run["rows"] if r["variant"] == v) for run in runs] for v in variants}
    return {
        v: {"ratios": rs, "median": statistics.median(rs), "min": min(rs), "max": max(rs)} for v, rs in ratios.items()
    }


def case_label(case: dict) -> str:
    return f"{case['model']} {case['method']} ×{case['batch']}"


def figure(results: list) -> plt.Figure:
    """Left: each remote variant's step time ÷ the in-process step, one dot per run, per case.
    Right: where the last run's median remote step goes."""
    fig, (ratio_ax, split_ax) = plt.subplots(1, 2, figsize=(5 + 3 * len(results), 4))
    labels = []
    for i, model in enumerate(results):
        for j, variant in enumerate(f"remote {dtype} {image_wire}" for dtype, image_wire in WIRE):  # WIRE's colours
            spread = model["across_runs"][variant]
            x = i + 0.15 * (j - (len(WIRE) - 1) / 2)
            ratio_ax.scatter(
                [x] * len(spread["ratios"]), spread["ratios"], color=f"C{j}", label=variant if i == 0 else None
            )
            ratio_ax.hlines(spread["median"], x - 0.08, x + 0.08, color=f"C{j}")
        for row in model["runs"][-1]["rows"][1:]:
            labels.append(case_label(model).replace(" ", "\n", 1) + f"\n{row['variant'].replace('remote ', '')}")
            bottom = 0.0
            for k, part in enumerate(("client_s", "device_s", "transport_s")):
                # client_s is the step less the calls' time, negative when concurrent calls overlap
                split_ax.bar(
                    labels[-1],
                    max(row[part], 0.0),
                    bottom=bottom,
                    color=f"C{k + 2}",
                    label=part[:-2].replace("transport", "wire") if len(labels) == 1 else None,
                )
                bottom += max(row[part], 0.0)
            in_process = model["runs"][-1]["rows"][0]["median_s"]
            split_ax.hlines(
                in_process,
                len(labels) - 1.4,
                len(labels) - 0.6,
                color="black",
                label="in-process step" if len(labels) == 1 else None,
            )
    ratio_ax.axhline(1.0, color="grey", linestyle=":")
    ratio_ax.set_xticks(range(len(results)), [case_label(m).replace(" ", "\n", 1) for m in results])
    ratio_ax.set(ylabel="remote step ÷ in-process step", title="step overhead, one dot per run")
    split_ax.set(ylabel="seconds (median step)", title="where a remote step goes")
    split_ax.tick_params(axis="x", labelsize=7)
    for ax in (ratio_ax, split_ax):
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small-224,vit-b-32", help=f"comma-separated of {list(MODELS)}")
    p.add_argument("--methods", default="dga", help=f"comma-separated of {list(METHODS)}")
    p.add_argument(
        "--batches",
        help="comma-separated batch sizes (default: per model, "
        + ", ".join(f"{name} {spec[2]}" for name, spec in MODELS.items())
        + ")",
    )
    p.add_argument("--reps", type=int, help="interleaved repetitions per run (default: per model)")
    p.add_argument("--runs", type=int, default=3, help="runs per case, each with a fresh server and workers")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for step_overhead.json and .png")
    p.add_argument("--data", action="store_true", help="batches from JPEG files through the DataLoader")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers with --data")
    p.add_argument("--data-csv", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["in-process", "remote"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--wire-dtype", help=argparse.SUPPRESS)
    p.add_argument("--image-wire", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    os.environ["HF_HUB_OFFLINE"] = "1"
    for option, known in (("models", MODELS), ("methods", METHODS)):
        unknown = set(getattr(args, option).split(",")) - set(known)
        if unknown:
            p.error(f"--{option}: unknown {sorted(unknown)}; known: {list(known)}")
    data = []
    if args.data:
        csv = write_jpeg_data(
            Path(os.environ.get("GRAYTUNE_CACHE", Path.home() / ".cache" / "graytune")) / "bench-jpegs"
        )
        data = ["--data-csv", str(csv), "--loader-workers", str(args.loader_workers)]
    results = []
    for name in args.models.split(","):
        batches = [int(b) for b in args.batches.split(",")] if args.batches else [MODELS[name][2]]
        for method in args.methods.split(","):
            for batch in batches:
                runs = []
                for _ in range(args.runs):
                    runs.append(bench_case(name, method, batch, args.reps or MODELS[name][3], args.warmup, data))
                    report(runs[-1])
                case = {"model": name, "method": method, "batch": batch, "runs": runs, "across_runs": across_runs(runs)}
                print(
                    f"\n{case_label(case)} over {args.runs} runs: "
                    + "; ".join(
                        f"{v} {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"
                        for v, s in case["across_runs"].items()
                        if v != "in-process"
                    )
                )
                results.append(case)
    print(f"\nwritten to {save_results(args.out, 'step_overhead', results, lambda: figure(results))} and its .png")


if __name__ == "__main__":
    main()
