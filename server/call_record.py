"""What one call did: its audit log line and its metrics, written once however the call ends."""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from graytune.server.auth import Caller
from graytune.server.metrics import ServerMetrics

log = logging.getLogger("graytune.server")


class CallRecord:
    """What one call did, for its log line and the metrics."""

    def __init__(self, method: str, caller: Caller, metrics: Optional[ServerMetrics] = None,
                 deadline: Optional[float] = None):
        self.method, self.caller, self.metrics = method, caller, metrics
        self.deadline = deadline  # time.monotonic by which the call must be done
        self.samples = self.bytes_in = self.bytes_out = self.charged = 0
        self.device_seconds = 0.0
        self.start = time.perf_counter()
        self._logged = threading.Lock()

    def log(self, status: str, detail: str = "") -> None:
        """The call's one log line and metrics; later calls (a call expired, then failing) are no-ops."""
        if not self._logged.acquire(blocking=False):
            return
        seconds = time.perf_counter() - self.start
        if self.metrics is not None:
            self.metrics.observe(self.method, self.caller.tier, status, self.samples, self.bytes_in,
                                 self.bytes_out, seconds, self.device_seconds)
        ms = seconds * 1e3
        level = logging.INFO if status == "OK" else logging.WARNING
        log.log(level, "call method=%s caller=%s tier=%s samples=%d bytes_in=%d bytes_out=%d "
                "status=%s latency_ms=%.1f device_ms=%.1f%s", self.method, self.caller.id,
                self.caller.tier, self.samples, self.bytes_in, self.bytes_out, status, ms,
                self.device_seconds * 1e3,
                f" detail={detail!r}" if detail else "")
