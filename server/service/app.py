"""Builds and runs the gRPC server (grpc.aio): oracle service, health checking, reflection.

gRPC's own `maximum_concurrent_rpcs` is not used: it counts every call, the health check and
Describe included, so one caller's streams could get those refused. The servicer's admission
caps billed calls per key and in all; health and Describe are always answered.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from graytune.server.compute.oracle import GradientOracle
from graytune.server.service.reflection_cap import ReflectionCap
from graytune.server.service.servicer import OracleServicer, add_to_server
from graytune.v1 import oracle_pb2

log = logging.getLogger("graytune.server")
SERVICE_NAME = oracle_pb2.DESCRIPTOR.services_by_name["GradientOracle"].full_name
# A health status of its own: NOT_SERVING while the usage store does not answer. The server's
# own ("" and SERVICE_NAME) stays SERVING, since Describe and unbudgeted keys are still served
# and every replica shares the store: a balancer ejecting them all would serve no one.
USAGE_STORE_HEALTH = "graytune.UsageStore"


class OracleServer:
    """The oracle on a port, with its health service and graph sweeper. Built, started and
    stopped inside the event loop that serves it."""

    def __init__(
        self,
        oracle: GradientOracle,
        servicer: OracleServicer,
        address: str,
        tls: grpc.ServerCredentials | None = None,
        reflection_streams: int = 0,
    ):
        """`tls`: server credentials (TLS, or mutual TLS); None serves plaintext.
        `reflection_streams`: gRPC reflection with at most this many streams at once; 0: off."""
        limits = oracle.limits
        options = [
            # Chunks stay far below these; they only bound what one message may cost.
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            # gRPC's default SO_REUSEPORT lets a second server bind a port in use and split the
            # connections with the first: a Backward would land where its Forward never was.
            ("grpc.so_reuseport", 0),
        ]
        self.oracle, self.servicer = oracle, servicer
        interceptors = [ReflectionCap(reflection_streams)] if reflection_streams else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        add_to_server(servicer, self.server)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs' health lacks aio
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if reflection_streams:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
            )
        try:
            self.port = (
                self.server.add_secure_port(address, tls) if tls is not None else self.server.add_insecure_port(address)
            )
        except RuntimeError:  # grpcio's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {address}: the port is in use or the address is not this host's")
        self._stop_sweeper = threading.Event()

    async def start(self) -> None:
        await self.server.start()
        self.oracle.store.run_sweeper(self._stop_sweeper)
        for service in ("", SERVICE_NAME):
            await self._report(service, True)
        store = self.servicer.store
        if store is not None:
            await self._report(USAGE_STORE_HEALTH, True)

            def changed(answering: bool) -> None:
                asyncio.ensure_future(self._report(USAGE_STORE_HEALTH, answering))

            store.on_change = changed

    async def report_draining(self) -> None:
        """NOT_SERVING for the server's own services while calls are still served: balancers
        move callers to other replicas before this one stops."""
        for service in ("", SERVICE_NAME):
            await self._report(service, False)

    async def _report(self, service: str, serving: bool) -> None:
        """A health status, and the same in the metrics (graytune_serving)."""
        status = health_pb2.HealthCheckResponse
        await self.health.set(service, status.SERVING if serving else status.NOT_SERVING)
        if self.servicer.metrics is not None:
            self.servicer.metrics.serving.labels(service or "server").set(int(serving))

    async def stop(self, grace_seconds: float) -> None:
        """Stops accepting calls, lets in-flight ones finish within the grace period; calls
        still queued for the device then end UNAVAILABLE (refunded, with their audit lines)."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
        self._stop_sweeper.set()
        await asyncio.to_thread(self.oracle.device.close)
        await self.servicer.wait_idle(timeout=5.0)
