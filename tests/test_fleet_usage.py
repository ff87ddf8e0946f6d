"""Three server processes on one real PostgreSQL usage store: budgets, charged call ids and rate
buckets hold across the replicas, and a store that goes away makes billed calls UNAVAILABLE
(retried by the client) until it is back, with nothing charged twice and nothing served free."""

from __future__ import annotations

import subprocess
import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graytune import error_details, tensor_codec
from graytune.client.transport.local_server import LocalServer, server_command
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

from helpers import KEYED_ARGS, calls_on, create_key, wait_until

RATE = 4.0  # calls per second of the rated key


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("fleet") / "keys.json"
    secrets = {
        "race": create_key(key_file, "--tier", "graybox", "--budget", "100"),
        "retried": create_key(key_file, "--tier", "graybox", "--budget", "1000"),
        "outage": create_key(key_file, "--tier", "graybox", "--budget", "100000"),
        "rated": create_key(key_file, "--tier", "graybox", "--rate", str(RATE)),
    }
    return key_file, secrets


@pytest.fixture(scope="module")
def store(postgres):
    return postgres.create_database("fleet")


@pytest.fixture(scope="module")
def replicas(keys, store):
    args = [*KEYED_ARGS, "--keys", str(keys[0]), "--usage-db", store, "--usage-timeout", "2"]
    servers = [LocalServer(args) for _ in range(3)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def used(replica, secret) -> int:
    with OracleClient(replica.endpoint, api_key=secret) as oracle:
        info = oracle.describe(refresh=True)
    return info.budget_samples - info.budget_remaining


def health(replica, service: str = "") -> str:
    with grpc.insecure_channel(replica.endpoint) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_a_budget_race_over_three_replicas_spends_exactly_the_budget(replicas, keys):
    secret, served, lock = keys[1]["race"], [], threading.Lock()

    def spend(replica):
        with OracleClient(replica.endpoint, api_key=secret, timeout=60) as oracle:
            while True:
                try:
                    rows = oracle.embed_texts(["a cat.", "a dog.", "a bird."]).shape[0]
                except OracleError as e:
                    assert e.reason == error_details.BUDGET_EXHAUSTED, e
                    return
                with lock:
                    served.append(rows)

    threads = [threading.Thread(target=spend, args=(replicas[i % 3],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sum(served) == 99  # 33 calls of 3: the 34th would need 102 of 100
    assert [used(r, secret) for r in replicas] == [99, 99, 99]
    embeds = [sum("method=Embed" in line and "status=OK" in line for line in r.output) for r in replicas]
    assert all(embeds), f"the race did not run on every replica: {embeds}"


def test_a_call_retried_on_another_replica_is_charged_once(replicas, keys):
    secret = keys[1]["retried"]
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    request = [
        pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE)),
        *(pb.InputMessage(chunk=c) for c in tensor_codec.tensor_to_chunks("pixels", pixels)),
    ]
    metadata = [("authorization", f"Bearer {secret}"), ("x-graytune-call-id", "one-logical-call")]
    for replica in replicas:  # the first attempt, then its retries through other replicas
        with grpc.insecure_channel(replica.endpoint) as channel:
            assert len(list(pb_grpc.GradientOracleStub(channel).Embed(iter(request), metadata=metadata))) > 1
    assert used(replicas[2], secret) == 5


def test_a_rate_limit_holds_across_replicas(replicas, keys):
    secret, served, lock, stop = keys[1]["rated"], [], threading.Lock(), threading.Event()

    def call(replica):
        with OracleClient(replica.endpoint, api_key=secret, timeout=60) as oracle:
            while not stop.is_set():
                oracle.embed_texts(["a cat."])  # waits as long as the rate limit asks, then again
                with lock:
                    served.append(time.monotonic())

    threads = [threading.Thread(target=call, args=(r,)) for r in replicas]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until(lambda: len(served) >= 5 + 8 * RATE, 120, "calls served")  # the burst, then 8 s at the rate
    stop.set()
    for thread in threads:
        thread.join(60)
    # The bucket holds one second's worth (4 calls), then refills RATE calls/s for all three
    # replicas together: three buckets of their own would serve three times as many.
    assert len(served) <= RATE + RATE * (served[-1] - start) + 1
    steady = (len(served) - 5) / (served[-1] - served[4])  # after the burst
    assert 0.9 * RATE <= steady <= 1.1 * RATE


def test_a_store_down_for_10_s_makes_billed_calls_wait_then_charges_them_once(replicas, keys, postgres):
    secret, replica, served, stop = keys[1]["outage"], replicas[0], [], threading.Event()
    before = used(replica, secret)

    def train():
        with OracleClient(replica.endpoint, api_key=secret, timeout=60, reconnect_timeout=120) as oracle:
            while not stop.is_set():
                served.append(oracle.embed_texts(["a cat.", "a dog."]).shape[0])  # UNAVAILABLE is retried

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        wait_until(lambda: len(served) >= 3, 120, "calls before the outage")
        postgres.stop()
        down = time.monotonic()
        wait_until(lambda: calls_on(replica, "UNAVAILABLE") > 0, 60, "a billed call refused UNAVAILABLE")
        during = len(served)
        assert health(replica) == "SERVING"  # health and Describe do not wait on it
        assert health(replica, "graytune.UsageStore") == "NOT_SERVING"  # but say it is gone
        with OracleClient(replica.endpoint, api_key=secret) as oracle:
            assert not oracle.describe(refresh=True).HasField("budget_remaining")  # unknown, said so
        threading.Event().wait(max(0.0, 10 - (time.monotonic() - down)))  # the outage the scenario asks for
        assert len(served) == during  # no billed call is served while its charge cannot be made
        postgres.start()
        wait_until(lambda: len(served) >= during + 3, 120, "calls after the store came back")
        assert health(replica, "graytune.UsageStore") == "SERVING"
    finally:
        postgres.start()  # a no-op when it runs
        stop.set()
        trainer.join(120)
    assert used(replica, secret) - before == sum(served)  # every served call charged, once


def test_a_server_refuses_a_store_it_cannot_use_before_loading_its_model(keys, postgres):
    missing = postgres.url("no_such_database").replace("postgres@", "postgres:hunter2@")
    command = [*server_command(), *KEYED_ARGS, "--keys", str(keys[0]), "--usage-db", missing]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert f"the usage database {postgres.url('no_such_database')}: " in refused.stderr
    assert 'database "no_such_database" does not exist' in refused.stderr and "hunter2" not in refused.stderr


def test_the_password_comes_from_a_file_and_is_needed(keys, postgres, tmp_path):
    url = postgres.create_secured_database("secured", "s3cret-pw")
    command = [*server_command(), *KEYED_ARGS, "--keys", str(keys[0]), "--usage-db", url]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and f"the usage database {url}: " in refused.stderr
    assert "password" in refused.stderr  # libpq: no password supplied
    password_file = tmp_path / "usage-db-password"
    password_file.write_text("s3cret-pw\n")  # as a Secret's file often ends
    with LocalServer(
        [*KEYED_ARGS, "--keys", str(keys[0]), "--usage-db", url, "--usage-db-password-file", str(password_file)]
    ) as server:
        assert used(server, keys[1]["race"]) == 0  # a store of its own, reached with the password
