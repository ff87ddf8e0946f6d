"""What one call did: its audit log line and its metrics, written once however the call ends."""

from __future__ import annotations

import logging
import threading
import time

from graytune.server.access.auth import Caller
from graytune.server.access.usage import Attempt
from graytune.server.compute.call_context import CallContext
from graytune.server.service.metrics import ServerMetrics

log = logging.getLogger("graytune.server")
MAX_DETAIL_CHARS = 300  # status messages cap what callers sent; this caps the line itself


class CallRecord:
    """What one call did, for its log line and the metrics."""

    def __init__(
        self,
        method: str,
        caller: Caller,
        metrics: ServerMetrics | None = None,
        deadline: float | None = None,
        call_id: str = "",
    ):
        self.method, self.caller, self.metrics = method, caller, metrics
        # What the oracle needs of the call (deadline: time.monotonic by which it must be done),
        # and where it tells the call's device time.
        self.compute = CallContext(deadline)
        self.call_id = call_id  # the client's id of the logical call, the same on its retries
        self.billed: str | None = None  # the budget kind the call is charged in, if any
        self.digest = ""  # of the request's bytes: binds the call id to this request
        self.samples = self.bytes_in = self.bytes_out = 0
        self.attempts: list[Attempt] = []  # this attempt's holds on budget charges
        self.replied = False  # the reply's last message was handed to gRPC: the call is served
        self.expired = False  # ended by the server's limit on call time
        self.start = time.perf_counter()
        self.began = time.monotonic()
        self._logged = threading.Lock()

    def log(self, status: str, detail: str = "") -> None:
        """The call's one log line and metrics; later calls (a call expired, then failing) are no-ops."""
        if not self._logged.acquire(blocking=False):
            return
        seconds = time.perf_counter() - self.start
        if self.metrics is not None:
            self.metrics.observe(
                self.method,
                self.caller.tier,
                status,
                self.samples,
                self.bytes_in,
                self.bytes_out,
                seconds,
                self.compute.device_seconds,
            )
        level = logging.INFO if status == "OK" else logging.WARNING
        # What this attempt paid: a retry that joined an earlier attempt's charge paid nothing.
        charged = " ".join(f"charged_{a.kind.replace(' ', '_')}={a.samples if a.new else 0}" for a in self.attempts)
        log.log(
            level,
            "call method=%s caller=%s tier=%s samples=%d bytes_in=%d bytes_out=%d "
            "status=%s latency_ms=%.1f device_ms=%.1f%s%s%s",
            self.method,
            self.caller.id,
            self.caller.tier,
            self.samples,
            self.bytes_in,
            self.bytes_out,
            status,
            seconds * 1e3,
            self.compute.device_seconds * 1e3,
            f" call_id={self.call_id}" if self.call_id else "",
            f" {charged}" if charged else "",
            f" detail={detail[:MAX_DETAIL_CHARS]!r}" if detail else "",
        )
