"""A hostile caller with a valid key (or none), against a real keyed server over real gRPC: it
cannot be served without paying, and cannot starve another key, the health check or Describe.
"""

from __future__ import annotations

import sqlite3
import threading

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from graytune import error_details, tensor_codec
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

from helpers import create_key

PER_KEY = 4
ARGS = (
    "--plaintext",
    "--threads",
    "1",
    "--log-level",
    "WARNING",
    "--max-calls-per-key",
    str(PER_KEY),
    "--upload-grace",
    "1",
    "--usage-timeout",
    "1",
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("abuse") / "keys.json"
    secrets = {
        "victim": create_key(key_file, "--tier", "graybox"),
        "abuser": create_key(key_file, "--tier", "graybox", "--budget", "100000", "--gradient-budget", "100000"),
        "spent": create_key(key_file, "--tier", "graybox", "--budget", "0"),
    }
    return key_file, secrets


@pytest.fixture(scope="module")
def server(keys):
    with LocalServer([*ARGS, "--keys", str(keys[0])]) as s:
        yield s


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.endpoint) as channel:
        yield pb_grpc.GradientOracleStub(channel)


def metadata(secret: str, call_id: str = None) -> list:
    return [("authorization", f"Bearer {secret}")] + ([("x-graytune-call-id", call_id)] if call_id else [])


def image_request(pixels: torch.Tensor) -> list:
    return [
        pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE)),
        *(pb.InputMessage(chunk=c) for c in tensor_codec.tensor_to_chunks("pixels", pixels)),
    ]


def used(server, secret, gradients=False) -> int:
    with OracleClient(server.endpoint, api_key=secret, retries=0) as oracle:
        info = oracle.describe(refresh=True)
    if gradients:
        return info.gradient_budget_samples - info.gradient_budget_remaining
    return info.budget_samples - info.budget_remaining


def test_a_reused_call_id_pays_for_every_other_request(server, keys, stub):
    abuser, before = keys[1]["abuser"], used(server, keys[1]["abuser"])
    for seed in range(5):  # five requests, one call id
        pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        list(stub.Embed(iter(image_request(pixels)), metadata=metadata(abuser, "the-same-id")))
    assert used(server, abuser) - before == 15
    list(stub.Embed(iter(image_request(pixels)), metadata=metadata(abuser, "the-same-id")))
    assert used(server, abuser) - before == 15  # the same request again is a retry: paid once


def test_failing_twins_never_refund_a_served_backward(server, keys, stub):
    abuser = keys[1]["abuser"]
    with OracleClient(server.endpoint, api_key=abuser, retries=0) as oracle:
        handle, embeddings = oracle.forward(pb.IMAGE, {"pixels": torch.randn(4, 3, 32, 32)})
    before = used(server, abuser, gradients=True)

    def backward(handle):
        return [
            pb.BackwardMessage(header=pb.BackwardHeader(handle=handle)),
            *(
                pb.BackwardMessage(chunk=c)
                for c in tensor_codec.tensor_to_chunks("embeddings", torch.ones_like(embeddings))
            ),
        ]

    list(stub.Backward(iter(backward(handle)), metadata=metadata(abuser, "C")))
    codes = []

    def twin(request):
        try:
            list(stub.Backward(iter(request), metadata=metadata(abuser, "C")))
        except grpc.RpcError as e:
            codes.append(e.code())

    twins = [
        threading.Thread(target=twin, args=(backward(h),)) for h in [handle] * 4 + ["00000000.1.0123456789abcdef"] * 4
    ]
    for t in twins:
        t.start()
    for t in twins:
        t.join(60)
    assert len(codes) == 8 and grpc.StatusCode.OK not in codes
    assert used(server, abuser, gradients=True) - before == 4


def test_a_caller_that_leaves_after_the_whole_reply_has_paid(server, keys, stub):
    abuser, before, rounds = keys[1]["abuser"], used(server, keys[1]["abuser"]), 20
    for i in range(rounds):
        call = stub.Embed(iter(image_request(torch.randn(3, 3, 32, 32))), metadata=metadata(abuser, f"leave-{i}"))
        assert next(call).HasField("header")  # the header, then the embeddings' one chunk: the whole reply
        assert next(call).HasField("chunk")
        call.cancel()  # before reading the status
    assert used(server, abuser) - before == 3 * rounds


def test_a_spent_key_is_refused_before_it_sends_anything(server, keys, stub):
    release = threading.Event()

    def nothing_yet():
        release.wait(60)
        yield from ()

    call = stub.Embed(nothing_yet(), metadata=metadata(keys[1]["spent"]), timeout=60)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    finally:
        release.set()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "0 of 0 samples left" in refused.value.details()


def test_one_key_cannot_starve_another_key_health_or_describe(server, keys, stub):
    abuser, release, ends = keys[1]["abuser"], threading.Event(), []

    def stalled():  # a header, then a few bytes every while: never the whole request
        yield pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE))
        release.wait(120)

    streams = [stub.Embed(stalled(), metadata=metadata(abuser), timeout=120) for _ in range(50)]
    for s in streams:
        s.add_done_callback(lambda call: ends.append(call.code()))
    try:
        with grpc.insecure_channel(server.endpoint) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with OracleClient(server.endpoint, api_key=keys[1]["victim"], retries=0, timeout=30) as victim:
                for _ in range(5):
                    assert victim.embed_images(torch.randn(2, 3, 32, 32)).shape[0] == 2
                    assert victim.describe(refresh=True).limits.max_calls_per_key == PER_KEY
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
        codes = [s.code() for s in streams]  # the stalled ones are cut, past --upload-grace
    finally:
        release.set()
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == len(streams) - PER_KEY
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == PER_KEY
    refused = next(s for s in streams if s.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error_details.refusal(refused).reason == error_details.TOO_MANY_CALLS
    cut = next(s for s in streams if s.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "minimum upload rate" in cut.details()


def test_reflection_is_off_unless_the_owner_turns_it_on(server, keys):
    release, channels, streams = threading.Event(), [], []

    def list_services(endpoint):  # a reflection stream held open until `release`
        channels.append(grpc.insecure_channel(endpoint))

        def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            release.wait(60)

        streams.append(
            reflection_pb2_grpc.ServerReflectionStub(channels[-1]).ServerReflectionInfo(requests(), timeout=60)
        )
        return next(streams[-1])

    try:
        with pytest.raises(grpc.RpcError) as off:
            list_services(server.endpoint)
        assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with LocalServer([*ARGS, "--keys", str(keys[0]), "--reflection-streams", "1"]) as capped:
            assert "graytune.v1.GradientOracle" in str(list_services(capped.endpoint))
            with pytest.raises(grpc.RpcError) as second:
                list_services(capped.endpoint)
            assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--reflection-streams" in second.value.details()
    finally:
        release.set()
        for channel in channels:
            channel.close()


def test_a_locked_usage_store_makes_billed_calls_unavailable_and_nothing_else_wait(server, keys):
    store = sqlite3.connect(keys[0].with_suffix(".usage.sqlite"), isolation_level=None)
    store.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a paused replica)
    try:
        with OracleClient(server.endpoint, api_key=keys[1]["abuser"], retries=0, timeout=30) as billed:
            with pytest.raises(OracleError) as unavailable:
                billed.embed_images(torch.randn(2, 3, 32, 32))
            assert unavailable.value.code == grpc.StatusCode.UNAVAILABLE
            assert "usage store" in unavailable.value.details and "retry" in unavailable.value.details
            assert billed.describe(refresh=True).budget_samples == 100000  # Describe does not wait
        with OracleClient(server.endpoint, api_key=keys[1]["victim"], retries=0, timeout=30) as free:
            assert free.embed_images(torch.randn(2, 3, 32, 32)).shape[0] == 2  # unbudgeted keys neither
    finally:
        store.execute("ROLLBACK")
        store.close()
    with OracleClient(server.endpoint, api_key=keys[1]["abuser"], timeout=30) as billed:
        assert billed.embed_images(torch.randn(2, 3, 32, 32)).shape[0] == 2
