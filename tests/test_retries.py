"""The client's side of a lost server, against a stand-in server in this process: every attempt
of one call carries the same call id, a wait for a restarted server is bounded and logged."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent import futures

import grpc
import pytest
import torch

import graytune
from graytune import tensor_codec
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.contract import CALL_ID_HEADER as CALL_ID
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

from helpers import free_port


class StandIn(pb_grpc.GradientOracleServicer):
    """Records the call id of every call; its first `failures` calls end with `failure()`."""

    def __init__(self, failures: int = 0, failure=None):
        self.call_ids = []
        self.failures = failures
        self.failure = failure or (lambda context: context.abort(grpc.StatusCode.UNAVAILABLE, "busy"))

    def _record(self, context) -> None:
        self.call_ids.append(dict(context.invocation_metadata()).get(CALL_ID))
        if len(self.call_ids) <= self.failures:
            self.failure(context)

    def Describe(self, request, context):
        self._record(context)
        return pb.DescribeResponse(protocol_version=graytune.PROTOCOL_VERSION)

    def Forward(self, request_iterator, context):
        for _ in request_iterator:  # the whole stream, as the real server reads it
            pass
        self._record(context)
        yield pb.OutputMessage(header=pb.OutputHeader(handle="h"))
        for chunk in tensor_codec.tensors_to_chunks({"embeddings": torch.zeros(2, 4)}):
            yield pb.OutputMessage(chunk=chunk)


def serve(servicer: StandIn, port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GradientOracleServicer_to_server(servicer, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    return server


class Announcement(logging.Handler):
    """Sets `seen` when the client logs a line containing `text`."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.seen = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def waits_logged(caplog, what: str) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "graytune.client" and what in r.getMessage()]


@pytest.mark.parametrize(
    "call",
    [
        lambda oracle: oracle.describe(refresh=True),
        lambda oracle: oracle.forward(pb.IMAGE, {"pixels": torch.zeros(2, 3, 8, 8)}),
    ],
    ids=["unary", "stream"],
)
def test_every_attempt_of_a_call_sends_its_call_id(call):
    port = free_port()
    stand_in = StandIn(failures=2)
    server = serve(stand_in, port)
    try:
        with OracleClient(f"127.0.0.1:{port}", timeout=10, reconnect_timeout=30) as oracle:
            call(oracle)
            call(oracle)
    finally:
        server.stop(None)
    first, retry, retry_again, second = stand_in.call_ids
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first == retry == retry_again, "a retried call is the same call"
    assert second != first, "another call, another id"


def test_a_call_waits_for_a_restarted_server_and_keeps_its_id(caplog):
    """The stand-in stops itself on the first call (its listener closes, as on a crash) and
    a new one starts on the port once the client says it is waiting."""
    caplog.set_level(logging.WARNING, logger="graytune.client")
    port = free_port()
    before, after = StandIn(failures=1, failure=lambda context: first.stop(None)), StandIn()
    first, restarted = serve(before, port), []
    waiting = Announcement("waiting up to 30 s")

    def restart():
        assert waiting.seen.wait(30), "the client never said it was waiting"
        restarted.append(serve(after, port))

    logging.getLogger("graytune.client").addHandler(waiting)
    try:
        with OracleClient(f"127.0.0.1:{port}", timeout=10, reconnect_timeout=30) as oracle:
            restarter = threading.Thread(target=restart)
            restarter.start()
            oracle.describe()
            restarter.join()
    finally:
        logging.getLogger("graytune.client").removeHandler(waiting)
        for server in [first, *restarted]:
            server.stop(None)
    assert before.call_ids == after.call_ids and len(after.call_ids) == 1
    assert len(waits_logged(caplog, f"Describe: server 127.0.0.1:{port} unavailable")) == 1
    assert len(waits_logged(caplog, "is back after")) == 1


def test_the_wait_for_a_server_is_bounded(caplog):
    caplog.set_level(logging.WARNING, logger="graytune.client")
    reconnect_timeout = 1.0
    with OracleClient(f"127.0.0.1:{free_port()}", timeout=10, reconnect_timeout=reconnect_timeout) as oracle:
        started = time.monotonic()
        with pytest.raises(OracleError) as failure:
            oracle.describe()
        waited = time.monotonic() - started
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE
    assert "could not connect to" in str(failure.value) and "within 1 s" in str(failure.value)
    # Each attempt to a closed port fails at once; the sleeps and the wait stop at the deadline.
    assert reconnect_timeout <= waited < reconnect_timeout + 5
    assert len(waits_logged(caplog, "waiting up to 1 s")) == 1
    assert not waits_logged(caplog, "is back")


def test_retries_zero_fails_at_once_without_waiting(caplog):
    caplog.set_level(logging.WARNING, logger="graytune.client")
    with OracleClient(f"127.0.0.1:{free_port()}", retries=0, reconnect_timeout=30) as oracle:
        with pytest.raises(OracleError) as failure:
            oracle.describe()
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE
    assert not waits_logged(caplog, "waiting")
