"""Many customers on one server: aggregate samples/s with 1, 2 and 4 concurrent clients
(--clients), each sending batches of --batch, against one client sending the same total work in
batches of clients x --batch. Each client is its own process, doing the server half of a gray-box step:
image Forward, then Backward of dL/dE (pixel gradients come back).

    python benchmarks/concurrent_clients.py [--batch 8] [--steps 8] [--repeats 3] [--model graytune-small-224]

Each measurement pairs a round of concurrent clients with a round of the one larger client,
back to back on the same server, --repeats times; it prints median samples/s and the median
(min-max) of the paired ratios, since a 2-core machine's run-to-run noise is several percent.
Runs once with the server merging concurrent image calls into one batch (its default) and
once with --no-merge-batches, so the effect of merging is measured in the same run. The server's
resident memory is sampled during the concurrent rounds (its peak while N clients hold graphs).
Writes OUT/concurrent_clients.json and .png (--out, default benchmarks/results).
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

from graytune.openmp import wait_passively

from evidence.memory import PeakMemory
from evidence.output import RESULTS, plt, save_results


def run_client(args) -> None:
    from graytune.client.transport.oracle_client import OracleClient
    from graytune.client.transport.remote import RemoteImageTower

    with OracleClient(args.endpoint) as oracle:
        size = oracle.describe().image.height
        tower = RemoteImageTower(oracle)
        pixels = torch.randn(args.batch, 3, size, size).requires_grad_()
        tower(pixels).sum().backward()  # warm-up, outside the timing
        print("ready", flush=True)
        sys.stdin.readline()  # start together
        start = time.perf_counter()
        for _ in range(args.steps):
            tower(pixels).sum().backward()
        print(json.dumps({"seconds": time.perf_counter() - start, "samples": args.steps * args.batch}), flush=True)


def run_round(endpoint: str, clients: int, batch: int, steps: int) -> float:
    """Aggregate samples/s of `clients` processes started together."""
    env = wait_passively(dict(os.environ))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                "--endpoint",
                endpoint,
                "--batch",
                str(batch),
                "--steps",
                str(steps),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(clients)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.wait(30)
    return sum(r["samples"] for r in results) / wall


def figure(results: list) -> plt.Figure:
    counts = [row["clients"] for row in results[0]["rows"]]
    fig, (rate, memory) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in results:
        label = "merged" if r["merge_batches"] else "one by one"
        rate.plot(counts, [row["samples_per_s"] for row in r["rows"]], marker="o", label=f"N clients, {label}")
        rate.plot(
            counts,
            [row["one_client_samples_per_s"] for row in r["rows"]],
            linestyle="--",
            marker=".",
            label=f"one client, N x batch, {label}",
        )
        memory.plot(counts, [row["server_peak_rss"] / 2**20 for row in r["rows"]], marker="o", label=label)
    rate.set(xlabel="concurrent clients", ylabel="samples/s (Forward + Backward)", xticks=counts)
    memory.set(xlabel="concurrent clients", ylabel="server peak RSS, MiB", xticks=counts)
    rate.legend(fontsize=7)
    memory.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="graytune-small-224")
    p.add_argument("--batch", type=int, default=8, help="per client")
    p.add_argument("--steps", type=int, default=8, help="per client and round")
    p.add_argument("--repeats", type=int, default=3, help="paired rounds per measurement")
    p.add_argument("--clients", default="1,2,4", help="concurrent client counts, comma-separated")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for concurrent_clients.json and .png")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        return run_client(args)
    from graytune.client.transport.local_server import LocalServer

    print(
        f"{args.model}: Forward + Backward of pixels, {args.steps} steps per client, "
        f"medians of {args.repeats} paired rounds"
    )
    counts = [int(n) for n in args.clients.split(",")]
    results = []
    for merge in (True, False):
        flags = [] if merge else ["--no-merge-batches"]
        with LocalServer(["--dev", "--plaintext", "--model", args.model, "--log-level", "WARNING", *flags]) as server:
            print(f"\nconcurrent image calls {'merged into one batch' if merge else 'run one by one'}")
            print(
                f"{'clients':>8}{'batch each':>12}{'samples/s':>11}{'one client, batch':>19}"
                f"{'samples/s':>11}{'ratio (min-max)':>22}{'server peak MiB':>17}"
            )
            rows = []
            for clients in counts:
                pairs, peak = [], 0
                for _ in range(args.repeats):
                    with PeakMemory(server.process.pid) as memory:  # during the concurrent round only
                        together = run_round(server.endpoint, clients, args.batch, args.steps)
                    peak = max(peak, memory.peak)
                    pairs.append((together, run_round(server.endpoint, 1, clients * args.batch, args.steps)))
                ratios = [together / alone for together, alone in pairs]
                row = {
                    "clients": clients,
                    "batch": args.batch,
                    "samples_per_s": statistics.median(t for t, _ in pairs),
                    "one_client_samples_per_s": statistics.median(a for _, a in pairs),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "server_peak_rss": peak,
                }
                rows.append(row)
                print(
                    f"{clients:>8}{args.batch:>12}{row['samples_per_s']:>11.1f}"
                    f"{clients * args.batch:>19}{row['one_client_samples_per_s']:>11.1f}"
                    f"{row['ratio']:>9.3f} ({row['ratio_min']:.3f}-{row['ratio_max']:.3f})"
                    f"{peak / 2**20:>17.0f}"
                )
            results.append(
                {
                    "model": args.model,
                    "merge_batches": merge,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "rows": rows,
                }
            )
    print(f"\nwritten to {save_results(args.out, 'concurrent_clients', results, lambda: figure(results))} and its .png")


if __name__ == "__main__":
    main()
