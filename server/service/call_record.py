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
        peer: str = "",
    ):
        self.method, self.caller, self.metrics = method, caller, metrics
        self.peer = peer  # the caller's address, as gRPC gives it ("ipv4:10.0.0.7:51234")
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

    def log(self, status: str, detail: str = "", reason: str = "") -> None:
        """The call's one log line and metrics; later calls (a call expired, then failing) are no-ops.
        `reason`: which limit refused it (error_details' RATE_LIMITED, BUDGET_EXHAUSTED, ...)."""
        if not self._logged.acquire(blocking=False):
            return
        seconds = time.perf_counter() - self.start
        if self.metrics is not None:
            self.metrics.observe(
                self.method,
                self.caller.id,
                self.caller.tier,
                status,
                self.samples,
                self.bytes_in,
                self.bytes_out,
                seconds,
                self.compute.device_seconds,
            )
        # What this attempt paid: a retry that joined an earlier attempt's charge paid nothing.
        charged = {f"charged_{a.kind.replace(' ', '_')}": a.samples if a.new else 0 for a in self.attempts}
        fields = {
            "method": self.method,
            "caller": self.caller.id,
            "tier": self.caller.tier,
            "samples": self.samples,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "status": status,
            **({"reason": reason} if reason else {}),
            "latency_ms": round(seconds * 1e3, 1),
            "device_ms": round(self.compute.device_seconds * 1e3, 1),
            **({"peer": self.peer} if self.peer else {}),
            **({"call_id": self.call_id} if self.call_id else {}),
            **charged,
            **({"detail": detail[:MAX_DETAIL_CHARS]} if detail else {}),
        }
        text = " ".join(f"{k}={v!r}" if k == "detail" else f"{k}={v}" for k, v in fields.items())
        # The text line for people and `graytune-server audit`; the fields as data for a JSON log.
        log.log(logging.INFO if status == "OK" else logging.WARNING, "call %s", text, extra=fields)
