"""Deadlines: a call is never worked on past its deadline, and none outlives the server's limit."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.server.compute.device import DeviceQueue
from graytune.server.compute.errors import DeadlineExceeded
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

from helpers import SERVER_ARGS, wait_until


def test_work_still_queued_at_its_deadline_is_dropped_unstarted():
    device, gate, holding, ran = DeviceQueue(), threading.Event(), threading.Event(), []
    busy = threading.Thread(target=device.run, args=("a", lambda: holding.set() or gate.wait(10)))
    busy.start()
    try:
        assert holding.wait(10)  # "a" holds the device
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="waiting for the device"):
            device.run("b", lambda: ran.append("b"), deadline=time.monotonic() + 0.2)
        assert 0.2 <= time.monotonic() - started < 5
        gate.set()
        busy.join(10)
        assert device.run("c", lambda: "c") == "c" and ran == []  # "b" never ran
    finally:
        gate.set()
        device.close()


def test_work_started_before_its_deadline_finishes():
    device = DeviceQueue()
    try:
        deadline = time.monotonic() + 2.0  # ample time to start; the work runs on past it
        outlive = lambda: wait_until(lambda: time.monotonic() > deadline + 0.1) or "done"
        assert device.run("a", outlive, deadline=deadline) == "done"
    finally:
        device.close()


@pytest.fixture(scope="module")
def short_calls():
    with LocalServer([*SERVER_ARGS, "--max-call-seconds", "1", "--log-level", "INFO"]) as s:
        yield s


def test_describe_reports_the_call_limit(short_calls):
    with OracleClient(short_calls.endpoint) as oracle:
        assert oracle.describe().limits.max_call_seconds == 1.0


def test_a_stalled_stream_is_ended_at_the_servers_call_limit(short_calls):
    release = threading.Event()

    def stalled():  # a header, then nothing: the server is left waiting for the tensors
        yield pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE))
        release.wait(30)

    with grpc.insecure_channel(short_calls.endpoint) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            list(pb_grpc.GradientOracleStub(channel).Embed(stalled(), timeout=30))
        release.set()
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--max-call-seconds" in failure.value.details()
    assert 1.0 <= time.monotonic() - started < 10
    lines = lambda: [line for line in short_calls.output if "method=Embed" in line and "DEADLINE_EXCEEDED" in line]
    wait_until(lines, 60, "the expired call's audit line")
    assert "--max-call-seconds" in lines()[-1]
    with OracleClient(short_calls.endpoint) as oracle:  # still serving
        assert oracle.embed_images(torch.randn(1, 3, 32, 32)).shape[0] == 1
