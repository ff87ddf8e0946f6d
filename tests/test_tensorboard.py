"""--report-to tensorboard: the event files hold what metrics.jsonl holds."""

from __future__ import annotations

import json

import pytest

from graytune.client.methods.graybox.options import DGAOptions
from graytune.client.training.loop import train
from graytune.client.training.tensorboard import scalars
from graytune.client.transport.oracle_client import OracleClient

from helpers import digits_run


def test_records_become_tagged_scalars():
    record = {
        "step": 5,
        "kind": "eval",
        "top1": 0.5,
        "per_class_accuracy": {"cat": 1.0, "dog": 0.0},
        "oracle/Embed_samples": 12,
    }
    assert dict(scalars(record)) == {
        "val/top1": 0.5,
        "val/per_class/cat": 1.0,
        "val/per_class/dog": 0.0,
        "oracle/Embed_samples": 12.0,
    }
    assert dict(scalars({"step": 1, "kind": "run", "task": "classify", "trainable_parameters": 9})) == {}


def test_event_files_match_the_metrics_log(server, digits, tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cfg = digits_run(digits, tmp_path, DGAOptions(steps=3, workers=0), batch_size=8, report_to=("tensorboard",))
    with OracleClient(server.endpoint) as oracle:
        train(oracle, cfg, progress=False)
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in logged if r["kind"] == "train"]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/loss")] == losses
    recall = [(e.step, e.value) for e in events.Scalars("val/image_to_text_R@1")]
    assert recall == [(r["step"], pytest.approx(r["image_to_text_R@1"])) for r in logged if "image_to_text_R@1" in r]
    assert [e.step for e in events.Scalars("oracle/Forward_samples")] == [1, 2, 3, 3]
