"""What the wire costs: one gray-box (DGA) training step through the server over loopback,
divided by the same step with the backbone in-process. Interleaved, medians.

    python benchmarks/step_overhead.py                       # both models, ~10 minutes on 2 cores
    python benchmarks/step_overhead.py --models small-224 --reps 20

Each variant runs in its own worker process, so each gets the settings it would have in real
use: the in-process step OpenMP's defaults; the remote client OMP_WAIT_POLICY=PASSIVE (it waits
while the server computes on the same cores, as `graytune` sets it). The driver starts the
server, sends the workers one step at a time in rotating order, and prints median step times,
their ratios (and the spread of per-round ratios), where a remote step's time goes (trainer,
server device, wire), the tensor bytes each way per step, and peak memory.
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

MODELS = {  # name: (OpenCLIP architecture, batch, default repetitions)
    "small-224": ("graytune-small-224", 32, 15),
    "vit-b-32": ("ViT-B-32", 16, 5),
}
WIRE = ("float32", "bfloat16")


# -- workers ---------------------------------------------------------------------------------
def build_step(args):
    """A trimmed copy of graytune.client.training.loop's step: adapters, towers, loss, backward, AdamW."""
    from graytune.client.adapters.graybox import AdapterConfig, GrayboxCLIP
    from graytune.client.tasks.retrieval.task import contrastive_step_loss

    torch.manual_seed(0)
    pixels = torch.randn(args.batch, 3, 224, 224)  # (B, 3, H, W)
    captions = [f"a photo of item number {i}." for i in range(args.batch)]
    if args.worker == "in-process":
        from graytune.server.compute.backbone import BackboneSource, load_backbone
        backbone = load_backbone(BackboneSource(model=args.model))
        config = AdapterConfig(embed_dim=backbone.embed_dim, token_width=backbone.text.token_width,
                               backbone_name=backbone.name, backbone_sha256=backbone.sha256)
        model = GrayboxCLIP(config, oracle=None)
        model.image_tower = LocalImageTower(backbone)
        model.text_tower = LocalTextTower(backbone)
        oracle = None
    else:
        from graytune.client.transport.oracle_client import OracleClient
        oracle = OracleClient(args.endpoint, wire_dtype=getattr(torch, args.wire_dtype))
        model = GrayboxCLIP(AdapterConfig.for_oracle(oracle), oracle)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = contrastive_step_loss(model, pixels, captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, oracle


class LocalImageTower(torch.nn.Module):
    """The backbone's image tower in this process: the baseline the wire is measured against."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(pixels)


class LocalTextTower(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, texts, shift=None, extra_tokens=None) -> torch.Tensor:
        k = 0 if extra_tokens is None else extra_tokens.shape[0]
        return self.backbone.encode_text(self.backbone.text.tokenize(list(texts), k), shift, extra_tokens)


def run_worker(args) -> None:
    step, oracle = build_step(args)
    counters = ("bytes_sent", "bytes_received", "call_seconds", "device_seconds")
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        before = [getattr(oracle, c, 0) for c in counters]
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        up, down, in_calls, device = [getattr(oracle, c, 0) - b for c, b in zip(counters, before)]
        print(json.dumps({"seconds": seconds, "up": up, "down": down, "device": device,
                          "transport": in_calls - device, "client": seconds - in_calls,
                          "peak_rss": peak_rss(os.getpid())}), flush=True)


# -- driver ----------------------------------------------------------------------------------
def peak_rss(pid: int) -> int:
    """Peak resident memory of a process, bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Worker:
    def __init__(self, label: str, argv, env):
        self.label = label
        self.proc = subprocess.Popen([sys.executable, __file__, *argv], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
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


def bench_model(name: str, reps: int, warmup: int) -> dict:
    from graytune.client.transport.local_server import LocalServer

    arch, batch, _ = MODELS[name]
    common = ["--model", arch, "--batch", str(batch)]
    with LocalServer(["--dev", "--plaintext", "--model", arch, "--log-level", "WARNING"]) as server:
        workers = [Worker("in-process", ["--worker", "in-process", *common], dict(os.environ))]
        for wire in WIRE:
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            workers.append(Worker(f"remote {wire}", ["--worker", "remote", "--endpoint", server.endpoint,
                                                     "--wire-dtype", wire, *common], env))
        try:
            for _ in range(warmup):
                for w in workers:
                    w.step()
            for w in workers:
                w.results.clear()
            for rep in range(reps):  # rotate the order so no variant always follows another
                for w in workers[rep % len(workers):] + workers[:rep % len(workers)]:
                    w.step()
            server_peak = peak_rss(server.process.pid)
        finally:
            for w in workers:
                w.close()
    base = workers[0].results
    rows = []
    for w in workers:
        med = lambda key: statistics.median(r[key] for r in w.results)
        # Paired by round: each step over the in-process step of its own round, robust to drift.
        paired = sorted(r["seconds"] / b["seconds"] for r, b in zip(w.results, base))
        quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
        rows.append({"variant": w.label, "median_s": med("seconds"),
                     "ratio": med("seconds") / statistics.median(b["seconds"] for b in base),
                     "paired_q1": quartiles[0], "paired_q3": quartiles[-1],
                     "client_s": med("client"), "device_s": med("device"), "transport_s": med("transport"),
                     "up_bytes": w.results[-1]["up"], "down_bytes": w.results[-1]["down"]})
    return {"model": name, "arch": arch, "batch": batch, "reps": reps, "rows": rows,
            "server_peak_rss": server_peak, "in_process_peak_rss": base[-1]["peak_rss"]}


def report(result: dict) -> None:
    print(f"\n{result['model']} ({result['arch']}, batch {result['batch']}, {result['reps']} interleaved reps)")
    print(f"  {'variant':<17}{'step s':>8}{'ratio':>7}{'paired IQR':>14}{'client s':>10}{'server s':>10}"
          f"{'wire s':>8}{'MB up':>8}{'MB down':>9}")
    for r in result["rows"]:
        remote = r["variant"] != "in-process"
        split = (f"{r['client_s']:>10.3f}{r['device_s']:>10.3f}{r['transport_s']:>8.3f}" if remote
                 else f"{'':>10}{'':>10}{'':>8}")
        print(f"  {r['variant']:<17}{r['median_s']:>8.3f}{r['ratio']:>7.3f}"
              f"{r['paired_q1']:>8.3f}-{r['paired_q3']:.3f}{split}"
              f"{r['up_bytes'] / 1e6:>8.2f}{r['down_bytes'] / 1e6:>9.2f}")
    print(f"  peak RSS: server {result['server_peak_rss'] / 2**20:.0f} MiB, "
          f"in-process trainer {result['in_process_peak_rss'] / 2**20:.0f} MiB")
    print("  client s: the trainer's own work; server s: the server's device thread; "
          "wire s: the rest of the calls (serialisation, gRPC, queueing)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated of {list(MODELS)}")
    p.add_argument("--reps", type=int, help="interleaved repetitions (default: per model)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", choices=["in-process", "remote"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--wire-dtype", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    os.environ["HF_HUB_OFFLINE"] = "1"
    results = []
    for name in args.models.split(","):
        result = bench_model(name, args.reps or MODELS[name][2], args.warmup)
        report(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
