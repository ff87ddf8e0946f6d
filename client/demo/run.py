"""The main job, end to end on one machine: an owner server on the built-in model, the digits
data set with templated captions, a short gray-box fine-tune over gRPC, before/after metrics.

    graytune demo [--steps N] [--workdir graytune-demo]    (`graytune demo --help`: the defaults)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from graytune.client.demo.digits import write_digits
from graytune.client.methods.graybox.options import DGAOptions
from graytune.client.training.loop import TrainConfig, train
from graytune.client.training.run_dir import RunDir
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

SHOWN = (
    "image_to_text_R@1",
    "image_to_text_R@5",
    "text_to_image_R@1",
    "text_to_image_R@5",
    "image_to_text_mean_rank",
    "text_to_image_mean_rank",
)


def run_demo(workdir: str | Path, steps: int, wire_dtype: torch.dtype) -> dict:
    workdir = Path(workdir)
    data = write_digits(workdir / "data")
    run_dir = workdir / "run"
    started = time.monotonic()
    with (
        LocalServer(["--dev", "--plaintext", "--pretrained", "mnist"]) as server,
        OracleClient(server.endpoint, wire_dtype=wire_dtype) as oracle,
    ):
        info = oracle.info()
        print(
            f"owner server at {server.endpoint}: {info.backbone.name} "
            f"(sha256 {info.backbone.sha256[:12]}…), tier {info.tier}, ready after "
            f"{time.monotonic() - started:.0f} s (the first start builds the model)"
        )
        cfg = TrainConfig(
            train_data=str(data["train"]),
            val_data=str(data["val"]),
            output_dir=str(run_dir),
            batch_size=32,
            eval_every=steps,
            save_every=max(1, steps // 2),
            options=DGAOptions(steps=steps, lr=3e-3),
        )
        started = time.monotonic()
        after = train(oracle, cfg, overwrite=True)  # a demo starts fresh
        print(f"fine-tune: {steps} steps and two evaluations in {time.monotonic() - started:.0f} s")
    records = RunDir(run_dir).records()
    before = next(r for r in records if r["kind"] == "zero_shot")
    print(f"\n{'metric':<26}{'zero-shot':>12}{'fine-tuned':>12}")
    for key in SHOWN:
        print(f"{key:<26}{before[key]:>12.3f}{after[key]:>12.3f}")
    print(f"\nadapter: {run_dir / 'adapter'}   metrics: {run_dir / 'metrics.jsonl'}")
    try:
        from graytune.client.plot import plot_runs

        print(f"plot:    {plot_runs([run_dir], run_dir / 'metrics.png')}")
    except ModuleNotFoundError:  # matplotlib is an extra
        print("plot:    pip install 'graytune[plot]', then `graytune plot` the run directory")
    return {"before": before, "after": after}
