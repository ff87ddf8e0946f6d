"""Connecting: a server never reached fails after connect_timeout, one that went away is waited
for up to reconnect_timeout; one error type, clean shutdown."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError

from helpers import SERVER_ARGS, free_port


def test_unavailable_server_is_one_clear_error():
    with OracleClient(f"127.0.0.1:{free_port()}", retries=0, timeout=5) as oracle:
        with pytest.raises(OracleError) as failure:
            oracle.describe()
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE
    assert failure.value.method == "Describe"


def test_an_endpoint_never_reached_fails_after_the_connect_timeout():
    port = free_port()
    started = time.monotonic()
    with OracleClient(f"127.0.0.1:{port}", connect_timeout=2, reconnect_timeout=3600, timeout=5) as oracle:
        with pytest.raises(OracleError) as failure:
            oracle.describe()
    assert time.monotonic() - started < 60, "waited for the reconnect timeout, not the connect timeout"
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE
    message = str(failure.value)
    assert f"could not connect to 127.0.0.1:{port} within 2 s (connection refused)" in message
    assert "--endpoint" in message


def test_a_server_that_went_away_is_waited_for_beyond_the_connect_timeout():
    """Reached once, the server is waited for up to reconnect_timeout: its restart takes
    seconds, far more than the connect timeout."""
    port = free_port()
    first = LocalServer([*SERVER_ARGS, "--port", str(port)]).start()
    second = LocalServer([*SERVER_ARGS, "--port", str(port)])
    try:
        with OracleClient(first.endpoint, connect_timeout=0.5, reconnect_timeout=300, timeout=30) as oracle:
            oracle.describe()
            first.kill()
            restarter = threading.Thread(target=second.start)
            restarter.start()
            try:
                assert oracle.describe(refresh=True).backbone.name == "graytune-tiny"
            finally:
                restarter.join()
    finally:
        first.stop()
        second.stop()


def test_client_retries_until_the_server_is_up():
    """A server not up yet is waited for as long as connect_timeout allows."""
    port = free_port()
    server = LocalServer([*SERVER_ARGS, "--port", str(port)])
    starter = threading.Timer(0.5, server.start)
    starter.start()
    try:
        with OracleClient(f"127.0.0.1:{port}", connect_timeout=120, reconnect_timeout=120, timeout=30) as oracle:
            started = time.monotonic()
            assert oracle.describe().backbone.name == "graytune-tiny"
            assert time.monotonic() - started > 0.5  # it did have to wait
    finally:
        starter.join()
        assert server.stop() == 0  # SIGTERM: drained and exited cleanly


def test_health_and_reflection_are_served():
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    # Reflection is off unless the owner turns it on (tests/test_abuse.py checks the default).
    with (
        LocalServer([*SERVER_ARGS, "--reflection-streams", "2"]) as server,
        grpc.insecure_channel(server.endpoint) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="graytune.v1.GradientOracle"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "graytune.v1.GradientOracle" in services
        assert "grpc.health.v1.Health" in services
        methods = {
            m.name
            for m in ProtoReflectionDescriptorDatabase(channel)
            .FindFileContainingSymbol("graytune.v1.GradientOracle")
            .service[0]
            .method
        }
        assert methods == {"Describe", "Embed", "Forward", "Backward"}
