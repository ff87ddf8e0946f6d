"""What the customer holds against what the owner holds: each method's deployed modules (their
parameters and buffers, as saved, and the bytes of their adapters.safetensors) and a client process's resident
memory while it holds them, against the backbone's parameters and the resident memory of a
process that holds the backbone in-process (what a white-box customer would need).

    python benchmarks/memory.py                                # graytune-tiny, small-224, ViT-B-32
    python benchmarks/memory.py --models graytune-tiny --classes 10

One server per model (random weights: sizes do not depend on them), tier graybox-plus so LGA's
deep prompts are offered. Methods: linear probe, DGA, LGA, CraFT (for --classes classes). Each
client runs in a fresh process, so its resident memory is its own: Python, torch, the gRPC
client and the modules. Writes OUT/memory.json and .png (--out, default benchmarks/results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from evidence.memory import status_bytes
from evidence.output import RESULTS, plt, save_results

METHODS = ("linear-probe", "graybox-dga", "graybox-lga", "craft")  # as adapter_config.json names them
MIB = 2**20


def client_modules(endpoint: str, method: str, classes: int) -> dict:
    """In this (fresh) process: the method's modules built against the server, saved as a
    customer's adapter -> parameters, file bytes, resident memory."""
    from graytune.client.methods.adapter_dir import save_adapters
    from graytune.client.methods.registry import build_model, saved_method
    from graytune.client.transport.oracle_client import OracleClient

    with OracleClient(endpoint) as oracle:
        chosen = saved_method(method)
        config = dataclasses.replace(
            chosen.adapter_config(oracle, chosen.options(), seed=0),
            classes=classes,
            task={"classnames": [f"class {i}" for i in range(classes)]},
        )
        model = build_model(config, oracle)
        with tempfile.TemporaryDirectory() as tmp:
            save_adapters(Path(tmp) / "adapter", model)
            file_bytes = (Path(tmp) / "adapter" / "adapters.safetensors").stat().st_size
        return {
            "parameters": sum(t.numel() for t in model.state_dict().values()),  # what is deployed
            "file_bytes": file_bytes,
            "rss": status_bytes(os.getpid()),
        }


def in_process_backbone(arch: str) -> dict:
    """In this (fresh) process: the backbone loaded as the server loads it."""
    from graytune.server.compute.backbone import BackboneSource, load_backbone

    backbone = load_backbone(BackboneSource(model=arch))
    return {"parameters": sum(p.numel() for p in backbone.model.parameters()), "rss": status_bytes(os.getpid())}


def in_fresh_process(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *argv],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return json.loads(done.stdout.splitlines()[-1])


def measure(arch: str, methods, classes: int) -> dict:
    from graytune.client.transport.local_server import LocalServer

    backbone = in_fresh_process("--worker-backbone", arch)
    with LocalServer(
        ["--dev", "--plaintext", "--tier", "graybox-plus", "--model", arch, "--log-level", "WARNING"]
    ) as server:
        methods = {
            m: in_fresh_process("--worker-client", m, "--endpoint", server.endpoint, "--classes", str(classes))
            for m in methods
        }
        server_rss = status_bytes(server.process.pid)
    return {"model": arch, "classes": classes, "backbone": {**backbone, "server_rss": server_rss}, "methods": methods}


def report(result: dict) -> None:
    b = result["backbone"]
    print(
        f"\n{result['model']}: backbone {b['parameters']:,} parameters ({4 * b['parameters'] / MIB:.1f} MiB "
        f"float32); in-process RSS {b['rss'] / MIB:.0f} MiB, server RSS {b['server_rss'] / MIB:.0f} MiB"
    )
    print(
        f"  {'method':<14}{'parameters':>12}{'% backbone':>12}{'file KiB':>10}{'client RSS MiB':>16}"
        f"{'÷ in-process':>14}"
    )
    for name, m in result["methods"].items():
        print(
            f"  {name:<14}{m['parameters']:>12,}{100 * m['parameters'] / b['parameters']:>12.3f}"
            f"{m['file_bytes'] / 1024:>10.1f}{m['rss'] / MIB:>16.0f}{m['rss'] / b['rss']:>14.2f}"
        )


def figure(results: list) -> plt.Figure:
    fig, (params, rss) = plt.subplots(1, 2, figsize=(11, 4))
    methods = list(results[0]["methods"])
    width = 0.8 / (len(methods) + 1)
    for k, label in enumerate(["backbone"] + methods):
        xs = [i + (k - len(methods) / 2) * width for i in range(len(results))]
        parts = [r["backbone"] if label == "backbone" else r["methods"][label] for r in results]
        params.bar(xs, [p["parameters"] for p in parts], width, label=label, color=f"C{k}")
        rss.bar(xs, [p["rss"] / MIB for p in parts], width, label=label if k else "backbone in-process", color=f"C{k}")
    for ax, ylabel in ((params, "parameters (log)"), (rss, "process RSS, MiB")):
        ax.set_xticks(range(len(results)), [r["model"] for r in results])
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    params.set_yscale("log")
    params.set_title("what each side holds")
    rss.set_title("a client process holding the modules vs the backbone")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="graytune-tiny,graytune-small-224,ViT-B-32", help="OpenCLIP architectures")
    p.add_argument("--methods", default=",".join(METHODS), help="the client's methods, comma-separated")
    p.add_argument("--classes", type=int, default=100, help="classes of the linear probe and CraFT")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for memory.json and memory.png")
    p.add_argument("--worker-backbone", help=argparse.SUPPRESS)
    p.add_argument("--worker-client", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_backbone:
        return print(json.dumps(in_process_backbone(args.worker_backbone)))
    if args.worker_client:
        return print(json.dumps(client_modules(args.endpoint, args.worker_client, args.classes)))
    os.environ["HF_HUB_OFFLINE"] = "1"
    results = []
    for arch in args.models.split(","):
        results.append(measure(arch, args.methods.split(","), args.classes))
        report(results[-1])
    print(f"\nwritten to {save_results(args.out, 'memory', results, lambda: figure(results))} and its .png")


if __name__ == "__main__":
    main()
