"""CraFT with a blackbox key: accuracy against queries spent (the paper's curve), and where the
time of one CMA-ES generation goes.

    python benchmarks/craft_queries.py                       # 8,000 queries at 16 shots, ~10 min here
    python benchmarks/craft_queries.py --queries 800 --shots 4 --out /tmp/craft

One owner server (the built-in MNIST-pretrained graytune-tiny, tier blackbox), scikit-learn's
digits as the few-shot task, `graytune train --method craft` exactly as a customer runs it.
From the run's metrics.jsonl: top-1 on the val set every --eval-every generations (zero-shot at
0 queries), and per generation the oracle calls made, the server's device time for them, the
rest of the call's wait (wire, queueing), and the client's own time (CMA-ES ask/tell, logits,
the refinement epoch). Writes OUT/craft_queries.json and OUT/craft_queries.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from graytune.openmp import wait_passively

wait_passively()  # client and server share the cores
os.environ["HF_HUB_OFFLINE"] = "1"

from graytune.client.demo.digits import write_digits  # noqa: E402
from graytune.client.methods.graybox.config import GrayboxConfig  # noqa: E402
from graytune.client.methods.graybox.model import GrayboxCLIP  # noqa: E402
from graytune.client.training.run_dir import RunDir  # noqa: E402
from graytune.client.transport.local_server import LocalServer  # noqa: E402
from graytune.client.transport.oracle_client import OracleClient  # noqa: E402

from evidence.output import RESULTS, plt, save_results  # noqa: E402


def run_craft(endpoint: str, data: dict, run_dir: Path, args) -> list:
    """`graytune train --method craft` in a process of its own -> its metrics.jsonl records."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "graytune.client.cli",
            "train",
            "--endpoint",
            endpoint,
            "--task",
            "classify",
            "--method",
            "craft",
            "--shots",
            str(args.shots),
            "--queries",
            str(args.queries),
            "--popsize",
            str(args.popsize),
            "--seed",
            str(args.seed),
            "--train-data",
            data["train_labels"],
            "--val-data",
            data["val_labels"],
            "--output-dir",
            str(run_dir),
            "--eval-every",
            str(args.eval_every),
            "--save-every",
            "1000000",
            "--no-progress",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return RunDir(run_dir).records()


def summarise(records: list) -> dict:
    zero_shot = next(r for r in records if r["kind"] == "zero_shot")
    evals = [r for r in records if r["kind"] == "eval"]
    steps = [r for r in records if r["kind"] == "train"]
    calls = [b["oracle/Embed_calls"] - a["oracle/Embed_calls"] for a, b in zip(steps, steps[1:])]
    mean = lambda key: statistics.fmean(key(r) for r in steps)
    return {
        "curve": {
            "queries": [0] + [r["queries"] for r in evals],
            "top1": [zero_shot["top1"]] + [r["top1"] for r in evals],
        },
        "zero_shot_top1": zero_shot["top1"],
        "final_top1": evals[-1]["top1"],
        "generations": len(steps),
        "oracle_calls_per_generation": sorted(set(calls)),
        "seconds_per_generation": {  # means over the generations: the parts add up to the total
            "total": mean(lambda r: r["batch_time"]),
            "server_device": mean(lambda r: r["oracle_device_time"]),
            "wire_and_queue": mean(lambda r: r["oracle_time"] - r["oracle_device_time"]),
            "client": mean(lambda r: r["batch_time"] - r["oracle_time"]),
        },
    }


def dga_bytes(endpoint: str) -> int:
    """float32 bytes of the default DGA adapters for the same backbone (what they would deploy)."""
    with OracleClient(endpoint) as oracle:
        model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
    return 4 * sum(p.numel() for p in model.parameters())


def figure(summary: dict) -> plt.Figure:
    fig, (curve, split) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    curve.plot(summary["curve"]["queries"], summary["curve"]["top1"], marker="o", label="CraFT")
    curve.axhline(summary["zero_shot_top1"], color="grey", linestyle="--", label="zero-shot")
    curve.set(xlabel="queries spent", ylabel="top-1 (val)", title="accuracy against queries")
    curve.legend()
    bottom = 0.0
    for part in ("server_device", "wire_and_queue", "client"):
        seconds = summary["seconds_per_generation"][part]
        split.bar(["generation"], [seconds], bottom=bottom, label=part.replace("_", " "))
        bottom += seconds
    split.set(ylabel="seconds (mean)", title="one generation")
    split.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=8000)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--popsize", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=10, help="generations between evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory() as work,
        LocalServer(
            [
                "--dev",
                "--plaintext",
                "--tier",
                "blackbox",
                "--pretrained",
                "mnist",
                "--threads",
                str(args.threads),
                "--log-level",
                "WARNING",
            ]
        ) as server,
    ):
        data = write_digits(Path(work) / "digits")
        summary = summarise(run_craft(server.endpoint, data, Path(work) / "run", args))
        summary["deployed_bytes"] = {
            "craft": (Path(work) / "run" / "adapter" / "adapters.safetensors").stat().st_size,
            "dga": dga_bytes(server.endpoint),
        }
    summary["settings"] = {k: getattr(args, k) for k in ("queries", "shots", "popsize", "seed", "threads")}
    save_results(args.out, "craft_queries", summary, lambda: figure(summary))
    split = summary["seconds_per_generation"]
    print(
        f"top-1: zero-shot {summary['zero_shot_top1']:.3f} -> {summary['final_top1']:.3f} after "
        f"{args.queries} queries ({summary['generations']} generations)"
    )
    print(f"oracle calls per generation: {summary['oracle_calls_per_generation']}")
    print(
        "seconds per generation (mean): "
        + ", ".join(f"{k} {v:.3f}" for k, v in split.items())
        + f"; server device {split['server_device'] / split['total']:.0%} of the generation"
    )
    sizes = summary["deployed_bytes"]
    print(
        f"deployed state: CraFT {sizes['craft'] / 1024:.1f} KiB (z, refinement MLP; A from its seed), "
        f"DGA adapters {sizes['dga'] / 1024:.1f} KiB"
    )
    print(f"wrote {args.out / 'craft_queries.json'} and {args.out / 'craft_queries.png'}")


if __name__ == "__main__":
    main()
