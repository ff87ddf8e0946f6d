"""Training through the real server: it learns, and an interrupted run resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graytune.client.data.tables import CsvFormat
from graytune.client.methods.graybox.options import DGAOptions
from graytune.client.training.loop import TrainConfig, _check_resume, train
from graytune.client.transport.oracle_client import OracleClient

from helpers import digits_run, records, train_command


def test_training_lowers_the_loss_and_raises_recall(pretrained_server, digits, tmp_path):
    cfg = digits_run(digits, tmp_path, DGAOptions(steps=60, lr=3e-3), batch_size=32)
    with OracleClient(pretrained_server.endpoint) as oracle:
        final = train(oracle, cfg, progress=False)
    zero_shot = records(tmp_path, "zero_shot")[0]
    losses = [r["loss"] for r in records(tmp_path, "train")]
    assert len(losses) == 60
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert final["image_to_text_R@1"] > zero_shot["image_to_text_R@1"] + 0.1
    assert final["image_to_text_mean_rank"] < zero_shot["image_to_text_mean_rank"]
    assert (tmp_path / "adapter" / "adapters.safetensors").is_file()


def cli_train(server, digits, run_dir, *extra):
    return train_command(
        server.endpoint, digits["train"], run_dir, "--steps", "40", "--save-every", "4", "--batch-size", "16", *extra
    )


def test_interrupted_run_resumes_to_the_same_result(server, digits, tmp_path):
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    subprocess.run(cli_train(server, digits, whole), check=True, capture_output=True)

    run = subprocess.Popen(cli_train(server, digits, interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = interrupted / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 10:
            run.send_signal(signal.SIGKILL)  # mid-run, between two checkpoints
            break
        time.sleep(0.02)
    assert run.wait() == -signal.SIGKILL, "the run ended before it could be interrupted"
    assert not (interrupted / "adapter").exists()

    subprocess.run(cli_train(server, digits, interrupted, "--resume"), check=True, capture_output=True)
    expected = load_file(str(whole / "adapter" / "adapters.safetensors"))
    resumed = load_file(str(interrupted / "adapter" / "adapters.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    steps = [r["step"] for r in records(interrupted, "train")]
    assert steps == list(range(1, 41)), "each step is logged once after a resume"


def test_resume_refuses_a_changed_batch_size_or_more_steps(server, digits, tmp_path):
    subprocess.run(cli_train(server, digits, tmp_path, "--steps", "4"), check=True, capture_output=True)
    # cli_train's 40 steps: more than the run's 4, so the run is not complete
    for changed, said in (("--batch-size", "8"), "--batch-size was 16"), ((), "--steps was 4"):
        result = subprocess.run(
            cli_train(server, digits, tmp_path, "--resume", *changed), capture_output=True, text=True
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert said in result.stderr and f"now {changed[1] if changed else 40}" in result.stderr, result.stderr


def resume_check(before: TrainConfig, now: TrainConfig, caplog) -> list[str]:
    """_check_resume of `now` against a checkpoint of `before` -> the lines it logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="graytune.client"):
        _check_resume(now, Path("ckpt"), {"train_config": json.loads(json.dumps(dataclasses.asdict(before)))})
    return [r.getMessage() for r in caplog.records]


def test_resume_names_each_setting_that_would_change_the_run(caplog):
    run = TrainConfig(
        train_data="t.csv", output_dir="run", val_data="v.csv", method="dga", options=DGAOptions(steps=100)
    )
    refused = {
        "--steps was 100 in ckpt, now 200": dict(options=DGAOptions(steps=200)),
        "--val-data was 'v.csv' in ckpt, now None": dict(val_data=None),
        "--lr was 0.001 in ckpt, now 0.01": dict(options=DGAOptions(lr=0.01)),
        "--csv-separator was '\\t' in ckpt, now ','": dict(csv=CsvFormat(csv_separator=",")),
        "--shots was 16 in ckpt, now 8": dict(task="classify", task_options={"shots": 8}),
    }
    for said, change in refused.items():
        before = dataclasses.replace(run, task="classify", task_options={"shots": 16}) if "task" in change else run
        with pytest.raises(ValueError) as refusal:
            resume_check(before, dataclasses.replace(run, **change), caplog)
        assert said in str(refusal.value), (said, str(refusal.value))
    taken = dataclasses.replace(
        run, eval_every=10, save_every=5, options=DGAOptions(steps=100, workers=0, skip_unreadable=True)
    )
    lines = resume_check(run, taken, caplog)
    assert lines == [
        "--resume: --eval-every was 50, now 10 (taken: it does not change the result)",
        "--resume: --skip-unreadable was False, now True (taken: it changes only batches holding a file that "
        "cannot be read, which stop a run without it)",
        "--resume: --workers was 2, now 0 (taken: the same batches, made in more or fewer processes)",
        "--resume: --save-every was 50, now 5 (taken: it does not change the result)",
    ]
    assert resume_check(run, run, caplog) == []


def test_a_setting_added_since_a_checkpoint_is_taken_when_left_unset(caplog):
    run = TrainConfig(train_data="t.csv", output_dir="run", options=DGAOptions(steps=100))
    saved = json.loads(json.dumps(dataclasses.asdict(run)))
    del saved["options"]["epochs"]  # written before --epochs existed
    _check_resume(run, Path("ckpt"), {"train_config": saved})
    with pytest.raises(
        ValueError, match="--resume: ckpt was written by another version of graytune .it has no --epochs"
    ):
        _check_resume(dataclasses.replace(run, options=DGAOptions(epochs=2)), Path("ckpt"), {"train_config": saved})


def test_epochs_become_the_steps_of_that_many_passes_over_the_data():
    assert DGAOptions(epochs=3).resolved(train_samples=1438, batch_size=128) == DGAOptions(steps=33)
    assert DGAOptions().resolved(1438, 128) == DGAOptions(steps=100)  # the default
    assert DGAOptions(steps=7).resolved(1438, 128) == DGAOptions(steps=7)
    for given, refusal in (
        (dict(steps=5, epochs=1), "--steps 5 and --epochs 1: give one"),
        (dict(epochs=0), "--epochs 0: give 1 or more"),
        (dict(steps=-1), "--steps -1: give 1 or more"),
    ):
        with pytest.raises(ValueError, match=refusal):
            DGAOptions(**given)
    with pytest.raises(ValueError, match="--batch-size 128 exceeds the 100 training samples"):
        DGAOptions(epochs=1).resolved(100, 128)


def test_resume_without_a_checkpoint_says_so(server, digits, tmp_path):
    result = subprocess.run(cli_train(server, digits, tmp_path, "--resume"), capture_output=True, text=True)
    assert result.returncode == 1
    assert "nothing to resume" in result.stderr


def test_input_lr_moves_the_input_modules_at_their_own_rate(server, digits, tmp_path):
    """--input-lr 0: the pixel adapter and text prompt stay at their initial values (AdamW's
    step and its decay both scale with the rate) while the output adapters learn at --lr."""
    plain, frozen_inputs = tmp_path / "plain", tmp_path / "frozen-inputs"
    for run_dir, extra in ((plain, ()), (frozen_inputs, ("--input-lr", "0"))):
        subprocess.run(
            cli_train(server, digits, run_dir, "--steps", "3", "--lr", "3e-3", "--wd", "0.1", *extra),
            check=True,
            capture_output=True,
        )
    learnt, kept = (load_file(str(d / "adapter" / "adapters.safetensors")) for d in (plain, frozen_inputs))
    inputs = [k for k in kept if k.split(".")[0] in ("pixel_adapter", "text_prompt")]
    outputs = [k for k in kept if k.split(".")[0] in ("image_head", "text_head")]
    assert inputs and outputs
    initial = _initial_adapters(server)
    for key in inputs:
        assert torch.equal(kept[key], initial[key]), key
        assert not torch.equal(learnt[key], initial[key]), key  # with --lr they do move
    for key in outputs:
        assert not torch.equal(kept[key], initial[key]), key


def _initial_adapters(server) -> dict:
    """The adapters a run starts from (its seed 0), as saved."""
    from graytune.client.methods.graybox.config import GrayboxConfig
    from graytune.client.methods.graybox.model import GrayboxCLIP

    with OracleClient(server.endpoint) as oracle:
        torch.manual_seed(0)
        model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_input_lr_is_refused_where_nothing_learns_inputs(server, digits, tmp_path):
    done = subprocess.run(
        cli_train(server, digits, tmp_path, "--adapters", "output", "--input-lr", "1e-4"),
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "--input-lr: " in done.stderr and "trains no input modules" in done.stderr
