"""Two replicas behind haproxy (deploy/haproxy.cfg): training goes through the balancer, each
Forward and its Backward land on one replica, and training goes on when that replica stops or
crashes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.tasks.retrieval.task import contrastive_step_loss
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from helpers import SERVER_ARGS, calls_on, free_port, wait_until

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"
REPLICA_ARGS = [a if a != "WARNING" else "INFO" for a in SERVER_ARGS]


@pytest.fixture
def balanced():
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    replicas = [LocalServer(REPLICA_ARGS).start() for _ in range(2)]
    port = free_port()
    env = {
        **os.environ,
        "GRAYTUNE_LB_BIND": f"127.0.0.1:{port}",
        "REPLICA_1": replicas[0].endpoint,
        "REPLICA_2": replicas[1].endpoint,
    }
    lb = subprocess.Popen(
        [haproxy, "-db", "-f", str(CONFIG)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        with OracleClient(f"127.0.0.1:{port}") as probe:
            probe.wait_ready(30)
        yield f"127.0.0.1:{port}", replicas
    finally:
        lb.terminate()
        lb.wait(10)
        for r in replicas:
            r.stop()


@pytest.mark.parametrize(
    "end, exit_code", [(LocalServer.stop, 0), (LocalServer.kill, -signal.SIGKILL)], ids=["SIGTERM", "SIGKILL"]
)
def test_training_survives_the_loss_of_its_replica(balanced, end, exit_code):
    endpoint, replicas = balanced
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, 32, 32)
    captions = ["a photo of the digit one.", "a photo of the digit two.", "a cat.", "a dog."]
    with OracleClient(endpoint, reconnect_timeout=60) as oracle:
        model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            loss = contrastive_step_loss(model, pixels, captions)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()

        losses = [step() for _ in range(3)]
        wait_until(lambda: any(calls_on(r) for r in replicas), 60, "audit lines")  # replies outrun logs
        served = [calls_on(r) for r in replicas]
        assert sorted(served)[0] == 0, f"one client's calls were spread over replicas: {served}"
        assert sum(calls_on(r, "ABORTED") for r in replicas) == 0  # pairs stayed together
        pinned = replicas[served.index(max(served))]
        other = replicas[1 - replicas.index(pinned)]
        assert end(pinned) == exit_code  # SIGTERM drains in-flight calls; SIGKILL, a crash
        losses += [step() for _ in range(3)]
    wait_until(lambda: calls_on(other) > 0, 60, "calls served by the other replica")
    assert all(torch.isfinite(torch.tensor(losses)))
