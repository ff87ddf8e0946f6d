"""What the oracle needs of one call from whoever serves it, and what it tells back."""

from __future__ import annotations

from dataclasses import dataclass, field

from graytune.server.compute.device import CancelScope


@dataclass
class CallContext:
    deadline: float | None = None  # time.monotonic; work not started on the device by then is dropped
    scope: CancelScope = field(default_factory=CancelScope)  # cancelled when the caller is gone
    arrival: object | None = None  # the token `GradientOracle.receiving` gave while the request arrived
    # Written by the oracle: the call's time on the device thread (a merged batch's whole time).
    device_seconds: float = 0.0
