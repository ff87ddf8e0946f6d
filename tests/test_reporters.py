"""--report-to tensorboard and wandb: the event files and the W&B run hold what metrics.jsonl holds."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from graytune.client.methods.graybox.options import DGAOptions
from graytune.client.training import checkpoint
from graytune.client.training.loop import train
from graytune.client.training.reporters import reporters, scalars
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


def wandb_history(run_file: Path) -> list[tuple[int, dict]]:
    """(step, {tag: value}) of each history record of an offline W&B run file: LevelDB's log
    format (32 KiB blocks of records: crc32c, length, kind; kind 1 whole, 2-4 first/middle/last
    part) after a 7-byte header, each record a wandb_internal Record."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, position, parts, history = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", run_file
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        parts += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = Record.FromString(parts)
            parts = b""
            if record.WhichOneof("record_type") == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                history.append((record.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return history


def test_a_wandb_run_holds_the_metrics_and_a_resume_continues_it(server, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    options = DGAOptions(steps=4, workers=0)
    cfg = digits_run(digits, tmp_path, options, batch_size=8, report_to=("wandb",), eval_every=2, save_every=2)
    with OracleClient(server.endpoint) as oracle:
        train(oracle, cfg, progress=False)
        (first,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
        logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        history = wandb_history(first)
        losses = [(r["step"], pytest.approx(r["loss"])) for r in logged if r["kind"] == "train"]
        assert [(step, values["train/loss"]) for step, values in history if "train/loss" in values] == losses
        recall = [(r["step"], pytest.approx(r["image_to_text_R@1"])) for r in logged if "image_to_text_R@1" in r]
        assert [(s, v["val/image_to_text_R@1"]) for s, v in history if "val/image_to_text_R@1" in v] == recall

        # Back to the checkpoint at step 2, as after a crash past step 4's records: the resumed
        # run continues the same W&B run and logs no step before the last one it holds.
        (tmp_path / checkpoint.LATEST).write_text("checkpoints/step_0000002\n")
        shutil.rmtree(tmp_path / "adapter")
        train(oracle, cfg, resume=True, progress=False)
    (second,) = set((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")) - {first}
    assert second.name == first.name, "the same W&B run id"
    assert {step for step, _ in wandb_history(second)} == {4}


def test_wandb_online_without_credentials_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for variable in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    with pytest.raises(ValueError, match=r"--report-to wandb: no W&B credentials here; run `wandb login`"):
        reporters(("wandb",), tmp_path / "run", 0)
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert reporters(("wandb",), tmp_path / "run", 0)  # offline needs none
