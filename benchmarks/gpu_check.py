"""The GPU check, one command on a machine with a CUDA GPU (`bash scripts/gpu_check.sh`, under 8
minutes on one H100 by its sizes): results to benchmarks/results/gpu/.

  1. tests/test_device.py on cuda, fp32 and amp_bf16: the adapter's gradients in both image wires
     against float32 on the CPU, within each precision's tolerance;
  2. step_overhead.py: ViT-B-32 and ViT-L-14 (random weights) at batch 64 and 256, every wire mode;
  3. concurrent_clients.py: 1, 2 and 4 clients on ViT-B-32;
  4. the upload overlap and peak device memory: frugal and pixel DGA steps (Forward + Backward)
     from 1 and from 2 clients at once, back to back; the device's busy fraction (its seconds ÷
     wall seconds: 1 when the next call's upload arrived while the device computed the current
     one) and the server's peak device memory (graytune_device_memory_peak_bytes).

--dry-run runs the same steps on the CPU with the tiny model and small sizes, into a temporary
folder unless --out: CI runs it, so the script never rots. A step that fails is recorded in
gpu_check.json with its output's end, and the others still run; the exit status says whether
any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from evidence.output import RESULTS

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
SIZES = {  # what each step measures, on the GPU and in a dry run (keys: the steps' names below)
    "gpu": {
        "device": "cuda",
        "step_overhead": "--models vit-b-32,vit-l-14 --batches 64,256 --runs 1 --reps 3".split(),
        "concurrent": "--model ViT-B-32 --batch 64 --steps 4 --repeats 1".split(),
        "overlap": {"model": "ViT-B-32", "batch": 128, "steps": 6},
    },
    "dry": {
        "device": "cpu",
        "step_overhead": "--models tiny --batches 8 --runs 1 --reps 1 --warmup 0".split(),
        "concurrent": "--model graytune-tiny --batch 2 --steps 1 --repeats 1 --clients 1,2".split(),
        "overlap": {"model": "graytune-tiny", "batch": 4, "steps": 2},
    },
}


def run(name: str, command: list[str], env: dict | None = None, timeout: float = 600) -> dict:
    """One step as a process: its status, seconds and the end of its output."""
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=BENCHMARKS, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    print(done.stdout[-4000:], done.stderr[-2000:] if done.returncode else "", flush=True)
    return {
        "name": name,
        "ok": done.returncode == 0,
        "seconds": round(time.perf_counter() - started, 1),
        "output_end": (done.stdout + done.stderr)[-1500:],
    }


def device_tests(device: str) -> list[dict]:
    return [
        run(
            f"gradients on {device}, {precision}",
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_device.py")],
            {"GRAYTUNE_TEST_DEVICE": device, "GRAYTUNE_TEST_PRECISION": precision},
        )
        for precision in ("fp32", "amp_bf16")
    ]


def overlap(model: str, batch: int, steps: int, device: str) -> dict:
    """Device busy fraction and peak device memory, per image wire, from 1 and 2 clients."""
    from graytune.client.modules.layers import PixelAdapter
    from graytune.client.transport.local_server import LocalServer
    from graytune.client.transport.oracle_client import OracleClient
    from graytune.client.transport.remote import RemoteImageTower
    from graytune.pixel_adapter import normalise

    metrics_port = free_port()
    args = ["--dev", "--plaintext", "--model", model, "--device", device, "--metrics-port", str(metrics_port)]
    results: dict = {"model": model, "batch": batch, "steps": steps, "rows": []}
    with LocalServer([*args, "--log-level", "WARNING"]) as server:
        for wire in ("pixels", "frugal"):
            for clients in (1, 2):
                device_seconds: list[float] = []

                def client() -> None:
                    with OracleClient(server.endpoint, image_wire=wire, timeout=600) as oracle:
                        image = oracle.info().image
                        eight_bit = torch.randint(0, 256, (batch, 3, image.height, image.width), dtype=torch.uint8)
                        pixels = normalise(eight_bit, image.mean, image.std)
                        adapter, tower = PixelAdapter(), RemoteImageTower(oracle)
                        tower(pixels, adapter=adapter).sum().backward()  # warm-up, not counted
                        before = oracle.device_seconds
                        ready.wait()
                        for _ in range(steps):
                            tower(pixels, adapter=adapter).sum().backward()
                        device_seconds.append(oracle.device_seconds - before)

                ready = threading.Barrier(clients + 1)
                threads = [threading.Thread(target=client) for _ in range(clients)]
                for thread in threads:
                    thread.start()
                ready.wait()
                started = time.perf_counter()
                for thread in threads:
                    thread.join()
                wall = time.perf_counter() - started
                busy = sum(device_seconds) / wall
                results["rows"].append({"wire": wire, "clients": clients, "wall_s": wall, "device_busy": busy})
                print(f"  {wire:>7}, {clients} client(s): device busy {busy:.2f} of {wall:.2f} s", flush=True)
        results["peak_device_memory_bytes"] = scrape(metrics_port, "graytune_device_memory_peak_bytes")
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, tiny model, small sizes")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/gpu; a dry run: a temp one)")
    args = p.parse_args()
    sizes = SIZES["dry" if args.dry_run else "gpu"]
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA GPU here: run it where there is one, or try --dry-run")
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.dry_run else RESULTS / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    started = time.perf_counter()
    steps = device_tests(sizes["device"])
    for name, script, key in (
        ("step overhead", "step_overhead.py", "step_overhead"),
        ("concurrent clients", "concurrent_clients.py", "concurrent"),
    ):
        steps.append(run(name, [sys.executable, script, *sizes[key], "--out", str(out)]))
    try:
        measured = overlap(**sizes["overlap"], device=sizes["device"])
        steps.append({"name": "upload overlap and peak memory", "ok": True, **measured})
    except Exception as e:  # recorded with the rest: the other steps' results still count
        steps.append({"name": "upload overlap and peak memory", "ok": False, "output_end": repr(e)[-1500:]})
    summary = {
        "device": torch.cuda.get_device_name(0) if sizes["device"] == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "steps": steps,
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [s["name"] for s in steps if not s["ok"]]
    print(f"\n{len(steps) - len(failed)} of {len(steps)} steps passed in {summary['seconds']:.0f} s; results in {out}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    busy = [r["device_busy"] for s in steps for r in s.get("rows", [])]
    if busy:
        print(f"device busy fraction, 1 and 2 clients: {statistics.mean(busy):.2f} on average")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
