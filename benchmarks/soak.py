"""Soak: N trainers against one server for M minutes; does the server's memory keep growing?

    python benchmarks/soak.py                          # 4 clients, 5 minutes, 60 s warm-up
    python benchmarks/soak.py --clients 2 --minutes 3 --warmup-seconds 45 --out soak-run

One server on loopback (the built-in graytune-tiny model, logging every call at INFO as in
production) and --clients processes, each training gray-box adapters (pixel adapter, text
prompt, output adapters; contrastive loss, AdamW) on fresh random pixels and captions every
step, with a no-grad evaluation every 10th step, until the run's end. Every --interval seconds
the driver samples the server's resident memory (VmRSS in /proc), the graphs and graph bytes it
holds for Backward and the calls it has answered (its Prometheus metrics; calls/s is the
difference between two samples).

Writes OUT/soak.json (settings, summary, samples) and OUT/soak.png (--out, default
benchmarks/results), and prints one line whose figure is the RSS growth over the samples taken
from the end of the warm-up (counted from the clients' start) to the end of the run: the median
of their last fifth over the median of their first fifth. The target is under 5%; the exit code is
1 when it is missed or a client failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from graytune.openmp import wait_passively

from evidence.memory import status_bytes
from evidence.output import RESULTS, plt, save_results

TARGET_GROWTH_PERCENT = 5.0
METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")
MIB = 2**20


# -- client ----------------------------------------------------------------------------------
def run_client(args) -> None:
    from graytune.client.methods.graybox.config import GrayboxConfig
    from graytune.client.methods.graybox.model import GrayboxCLIP
    from graytune.client.tasks.retrieval.task import contrastive_step_loss
    from graytune.client.transport.oracle_client import OracleClient

    torch.set_num_threads(1)  # the server needs the cores more
    g = torch.Generator().manual_seed(args.seed)
    steps = 0
    with OracleClient(args.endpoint) as oracle:
        image = oracle.describe().image
        model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        while time.time() < args.until:
            pixels = torch.randn(args.batch, 3, image.height, image.width, generator=g)
            # New captions every step: anything the server kept per distinct text would grow.
            captions = [
                f"item {n} from client {args.seed}" for n in torch.randint(10**9, (args.batch,), generator=g).tolist()
            ]
            loss = contrastive_step_loss(model, pixels, captions)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps % 10 == 0:  # evaluation: Embed calls, no graphs held
                with torch.no_grad():
                    model.encode_image(pixels)
                    model.encode_text(captions)
    print(json.dumps({"steps": steps}), flush=True)


# -- driver ----------------------------------------------------------------------------------
def scrape(url: str) -> dict[str, float]:
    """Graphs and bytes held, calls answered and calls not answered OK, from the metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {"graphs_held": 0.0, "graph_bytes_held": 0.0, "calls": 0.0, "calls_not_ok": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("graytune_graphs_held", "graytune_graph_bytes_held"):
                out[s.name.removeprefix("graytune_")] = s.value
            elif s.name == "graytune_requests_total":
                out["calls"] += s.value
                out["calls_not_ok"] += s.value if s.labels["status"] != "OK" else 0
    return out


def sample_while_running(
    pid: int, url: str, clients: list[subprocess.Popen], interval: float, start: float
) -> list[dict]:
    """Samples from `start` (time.monotonic, when the clients were started) until they have all ended."""
    samples = []
    while True:
        t = time.monotonic() - start
        sample = {"t": round(t, 2), "rss_bytes": status_bytes(pid), **scrape(url), "calls_per_s": 0.0}
        if samples:
            last = samples[-1]
            sample["calls_per_s"] = (sample["calls"] - last["calls"]) / (t - last["t"])
        samples.append(sample)
        if all(c.poll() is not None for c in clients):
            return samples
        time.sleep(max(0.0, start + len(samples) * interval - time.monotonic()))


def summarise(samples: list[dict], args, client_steps: list, failed: list[int]) -> dict:
    """The growth figure is taken from the end of the warm-up to the end of the load (clients
    take a moment to stop after it)."""
    loaded = [s for s in samples if args.warmup_seconds <= s["t"] <= args.minutes * 60]
    if len(loaded) < 10:
        raise SystemExit(
            f"only {len(loaded)} samples after the warm-up: run longer, or lower --warmup-seconds or --interval"
        )
    rss, fifth = [s["rss_bytes"] for s in loaded], len(loaded) // 5
    first, last = statistics.median(rss[:fifth]), statistics.median(rss[-fifth:])
    growth = 100 * (last - first) / first
    return {
        "clients": args.clients,
        "minutes": args.minutes,
        "warmup_seconds": args.warmup_seconds,
        "batch": args.batch,
        "client_steps": client_steps,
        "failed_clients": failed,
        "calls": samples[-1]["calls"],
        "calls_not_ok": samples[-1]["calls_not_ok"],
        "calls_per_s_median": statistics.median(s["calls_per_s"] for s in loaded),
        "max_graphs_held": max(s["graphs_held"] for s in samples),
        "max_graph_bytes_held": max(s["graph_bytes_held"] for s in samples),
        "rss_after_warmup": first,
        "rss_at_end": last,
        "growth_percent": growth,
        "met_target": growth < TARGET_GROWTH_PERCENT and not failed,
    }


def summary_line(s: dict) -> str:
    verdict = "met" if s["growth_percent"] < TARGET_GROWTH_PERCENT else "MISSED"
    return (
        f"soak: {s['clients']} clients x {s['minutes']:g} min, "
        f"{sum(n or 0 for n in s['client_steps'])} steps, {s['calls']:.0f} calls "
        f"(median {s['calls_per_s_median']:.1f}/s, {s['calls_not_ok']:.0f} not OK), graphs held "
        f"<= {s['max_graphs_held']:.0f} ({s['max_graph_bytes_held'] / MIB:.1f} MiB); server RSS "
        f"{s['rss_after_warmup'] / MIB:.1f} -> {s['rss_at_end'] / MIB:.1f} MiB after the "
        f"{s['warmup_seconds']:g} s warm-up: {s['growth_percent']:+.2f}% (target < "
        f"{TARGET_GROWTH_PERCENT:g}%: {verdict})"
        + (f"; clients {s['failed_clients']} FAILED" if s["failed_clients"] else "")
    )


def figure(samples: list[dict], summary: dict, warmup: float) -> plt.Figure:
    t = [s["t"] for s in samples]
    fig, (rss_ax, graph_ax, calls_ax) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    rss_ax.plot(t, [s["rss_bytes"] / MIB for s in samples], label="sampled")
    for key, style, label in (
        ("rss_after_warmup", ":", "median, first fifth after warm-up"),
        ("rss_at_end", "--", "median, last fifth"),
    ):
        rss_ax.axhline(summary[key] / MIB, linestyle=style, color="grey", label=label)
    graph_ax.plot(t, [s["graphs_held"] for s in samples], label="graphs held")
    bytes_ax = graph_ax.twinx()
    bytes_ax.plot(t, [s["graph_bytes_held"] / MIB for s in samples], color="tab:orange")
    bytes_ax.set_ylabel("graph MiB held", color="tab:orange")
    calls_ax.plot(t, [s["calls_per_s"] for s in samples])
    rss_ax.set(
        ylabel="server RSS, MiB",
        title=f"clients: {summary['clients']}, RSS growth after the warm-up: {summary['growth_percent']:+.1f}%",
    )
    graph_ax.set(ylabel="graphs held")
    calls_ax.set(ylabel="calls/s", xlabel="seconds")
    for ax in (rss_ax, graph_ax, calls_ax):
        ax.axvspan(0, warmup, color="grey", alpha=0.15)  # the warm-up, left out of the growth figure
        ax.grid(alpha=0.3)
    rss_ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--warmup-seconds", type=float, default=60.0, help="left out of the growth figure")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--batch", type=int, default=16, help="per client and step")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for soak.json and soak.png")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--until", type=float, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        return run_client(args)
    from graytune.client.transport.local_server import LocalServer

    env = wait_passively(dict(os.environ))  # clients wait on the server's cores
    with LocalServer(["--dev", "--plaintext", "--metrics-port", "0", "--log-level", "INFO"]) as server:
        url = next(m.group(1) for m in map(METRICS_LINE.search, list(server.output)) if m)
        start, until = time.monotonic(), time.time() + args.minutes * 60  # one end for all clients
        clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--client",
                    "--endpoint",
                    server.endpoint,
                    "--until",
                    str(until),
                    "--seed",
                    str(i),
                    "--batch",
                    str(args.batch),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(args.clients)
        ]
        samples = sample_while_running(server.process.pid, url, clients, args.interval, start)
    steps = [json.loads(c.stdout.read() or "{}").get("steps") for c in clients]
    summary = summarise(samples, args, steps, [i for i, c in enumerate(clients) if c.wait() != 0])
    save_results(
        args.out,
        "soak",
        {"summary": summary, "samples": samples},
        lambda: figure(samples, summary, args.warmup_seconds),
    )
    print(summary_line(summary) + f"; {args.out / 'soak.png'}")
    sys.exit(0 if summary["met_target"] else 1)


if __name__ == "__main__":
    main()
