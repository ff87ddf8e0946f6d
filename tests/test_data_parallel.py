"""`graytune train --nproc 2`: one run in two processes (gloo) through Envoy to two
replicas on one PostgreSQL usage store. Its adapters are the one-process run's to float
rounding, its key is charged the same samples, and a run stopped and resumed is bit-exact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graytune.client.data.batches import batch_indices
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from envoy_proxy import EnvoyProxy
from helpers import KEYED_ARGS, create_key, records, train_command

STEPS = ("--steps", "4", "--save-every", "2", "--batch-size", "8", "--workers", "0")
# The relative L2 distance between the two runs' adapters. Their embeddings differ by float32
# rounding (a call of 4 images rather than 8: another summation order in the backbone's matrix
# products, ~1e-7 relative), which four AdamW steps carry into the parameters: far below 1e-4.
ROUNDING = 1e-4


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, postgres):
    folder = tmp_path_factory.mktemp("data_parallel")
    key_file = folder / "keys.json"
    budget = ("--tier", "graybox", "--budget", "100000", "--gradient-budget", "100000")
    secrets = {name: create_key(key_file, *budget) for name in ("one", "two", "resumed")}
    store = postgres.create_database("data_parallel")
    # Each call computed alone (not merged with another process's): the same inputs give the
    # same bits on every run, so a resumed run can be compared bit for bit.
    args = [*KEYED_ARGS, "--keys", str(key_file), "--usage-db", store, "--no-merge-batches"]
    replicas, envoy = [], None
    try:
        for _ in range(2):
            replicas.append(LocalServer(args).start())
        envoy = EnvoyProxy(replicas, folder)
        yield envoy.endpoint, secrets
    finally:
        if envoy is not None:
            envoy.close()
        for replica in replicas:
            replica.stop()


def run(endpoint, secret, digits, run_dir, *args) -> None:
    command = train_command(endpoint, digits["train"], run_dir, *STEPS, *args)
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GRAYTUNE_API_KEY": secret})
    assert done.returncode == 0, done.stderr[-3000:]


def adapters(run_dir) -> dict:
    return load_file(str(run_dir / "adapter" / "adapters.safetensors"))


def charged(endpoint, secret) -> tuple[int, int]:
    with OracleClient(endpoint, api_key=secret) as oracle:
        info = oracle.describe(refresh=True)
    return (
        info.budget_samples - info.budget_remaining,
        info.gradient_budget_samples - info.gradient_budget_remaining,
    )


def test_two_processes_train_the_one_process_run_and_resume_bit_exact(fleet, digits, tmp_path):
    endpoint, secrets = fleet
    run(endpoint, secrets["one"], digits, tmp_path / "one")
    run(endpoint, secrets["two"], digits, tmp_path / "two", "--nproc", "2")
    one, two = adapters(tmp_path / "one"), adapters(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        distance = (two[name] - one[name]).norm() / one[name].norm().clamp_min(1e-12)
        assert distance <= ROUNDING, f"{name}: relative L2 {distance:.2e}"
    assert charged(endpoint, secrets["two"]) == charged(endpoint, secrets["one"])  # each sample once
    assert [r["step"] for r in records(tmp_path / "two", "train")] == [1, 2, 3, 4]  # rank 0 alone logs

    # The same run, stopped before its third step by images it cannot read (after the second's
    # checkpoint, before any call of the third), then resumed once they are readable again.
    data = tmp_path / "data"
    shutil.copytree(Path(digits["train"]).parent, data)
    rows = [line.split("\t")[0] for line in (data / "train.csv").read_text().splitlines()[1:]]
    third = [data / rows[i] for i in batch_indices(len(rows), 8, 0, 2)]  # seed 0, step index 2
    readable = {path: path.read_bytes() for path in third}
    for path in third:
        path.write_bytes(b"not a PNG")
    resumed, copy = tmp_path / "resumed", {"train": str(data / "train.csv")}
    command = train_command(endpoint, copy["train"], resumed, *STEPS, "--nproc", "2")
    stopped = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "GRAYTUNE_API_KEY": secrets["resumed"]}
    )
    said = [line for line in stopped.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]  # less log lines
    assert stopped.returncode == 1 and len(said) == 2, stopped.stderr[-3000:]  # said once, for both processes
    assert said[0].startswith(f"graytune train: error: {data / 'train.csv'}, line ") and "cannot read image" in said[0]
    assert said[1] == (
        "graytune train: the run stopped after step 2; resume with --resume (continues from the checkpoint at step 2)"
    )
    assert (resumed / "latest").read_text().strip().endswith("step_0000002")
    for path, content in readable.items():
        path.write_bytes(content)
    run(endpoint, secrets["resumed"], copy, resumed, "--nproc", "2", "--resume")
    for name, value in adapters(resumed).items():
        assert torch.equal(value, two[name]), name
    assert charged(endpoint, secrets["resumed"]) == charged(endpoint, secrets["two"])  # no step paid twice
