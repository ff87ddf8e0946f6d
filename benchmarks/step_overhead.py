"""What the wire costs: one gray-box (DGA) training step through the server over loopback,
divided by the same step with the backbone in-process. Interleaved, medians.

    python benchmarks/step_overhead.py                       # both models, ~10 minutes on 2 cores
    python benchmarks/step_overhead.py --models small-224 --reps 20
    python benchmarks/step_overhead.py --data --loader-workers 2   # `graytune train`'s whole step

With `--data`, each step also loads its batch as `graytune train` does: JPEG files (256 × 256,
built once by this script from scikit-learn's digits) decoded and resized to 224 in DataLoader
workers ahead of the step (`--loader-workers`, graytune's `--workers`), both variants with the
same pipeline; the step is the loop's own `train_step`. Without it, the batch is fixed pixels.

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
    """graytune.client.training.loop's step (train_step) on the DGA adapters, with the batches
    of `graytune train`'s data pipeline (--data) or fixed pixels."""
    from graytune.client.adapters.graybox import AdapterConfig, GrayboxCLIP
    from graytune.client.tasks.retrieval.task import RetrievalTask
    from graytune.client.training.loop import cosine_with_warmup, train_step

    torch.manual_seed(0)
    if args.data_csv:
        batches = iter(data_batches(args))
    else:
        pixels = torch.randn(args.batch, 3, 224, 224)  # (B, 3, H, W)
        captions = [f"a photo of item number {i}." for i in range(args.batch)]
        batches = iter(lambda: (pixels, captions), None)
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
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(10, 10**6))
    task = RetrievalTask(oracle)

    def step():
        train_step(task, model, next(batches), optimizer, schedule)
    return step, oracle


def data_batches(args):
    """`graytune train`'s batches of the JPEG data set, made by DataLoader workers."""
    from graytune.client.data.preprocess import Preprocess
    from graytune.client.tasks.retrieval.data import ImageCaptionDataset
    from graytune.client.training.batches import step_batches
    # The backbone's preprocessing (OpenCLIP's defaults for these models), as Describe reports it.
    preprocess = Preprocess(224, 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
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
        Image.fromarray(image).resize((256, 256), Image.Resampling.BICUBIC).save(folder / "images" / f"{i}.jpg", quality=90)
        rows.append(f"images/{i}.jpg\ta photo of the digit {digits.target[i]}.\n")
    csv.write_text("filepath\ttitle\n" + "".join(rows))
    return csv


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


def bench_model(name: str, reps: int, warmup: int, data: list) -> dict:
    from graytune.client.transport.local_server import LocalServer

    arch, batch, _ = MODELS[name]
    common = ["--model", arch, "--batch", str(batch), *data]
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
    return {"model": name, "arch": arch, "batch": batch, "reps": reps, "rows": rows, "data": bool(data),
            "server_peak_rss": server_peak, "in_process_peak_rss": base[-1]["peak_rss"]}


def report(result: dict) -> None:
    batches = "JPEG files through the DataLoader" if result["data"] else "fixed pixels"
    print(f"\n{result['model']} ({result['arch']}, batch {result['batch']} of {batches}, "
          f"{result['reps']} interleaved reps)")
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
    p.add_argument("--data", action="store_true", help="batches from JPEG files through the DataLoader")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers with --data")
    p.add_argument("--data-csv", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["in-process", "remote"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--wire-dtype", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return run_worker(args)
    os.environ["HF_HUB_OFFLINE"] = "1"
    data = []
    if args.data:
        csv = write_jpeg_data(Path(os.environ.get("GRAYTUNE_CACHE", Path.home() / ".cache" / "graytune")) / "bench-jpegs")
        data = ["--data-csv", str(csv), "--loader-workers", str(args.loader_workers)]
    results = []
    for name in args.models.split(","):
        result = bench_model(name, args.reps or MODELS[name][2], args.warmup, data)
        report(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
