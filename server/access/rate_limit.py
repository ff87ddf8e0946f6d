"""Per-key rate limits: a token bucket per key, counted in this server process.

Each replica counts its own calls: behind a balancer of R replicas a key may be served up to R
times its rate (Describe says so in `rate_limit_scope`; shared buckets come with a shared store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from graytune import error_details
from graytune.server.access.credentials import ApiKey
from graytune.server.compute.errors import OverLimit

SCOPE = "process"  # what one bucket counts: this server process's calls


class RateLimiter:
    """A token bucket per key: `rate_per_second` calls per second, bursts up to one second's worth."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # key id -> [tokens, last refill time]
        self._lock = threading.Lock()

    def acquire(self, key: ApiKey) -> None:
        rate = key.rate_per_second
        if rate is None:
            return
        capacity = max(1.0, rate)
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key.id, [capacity, now])
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key.id] = [tokens, now]
                wait = (1.0 - tokens) / rate
                raise OverLimit(
                    f"rate: key {key.id} is limited to {rate:g} calls/s; the next call is allowed in {wait:.2f} s",
                    error_details.RATE_LIMITED,
                    retry_after=wait,
                )
            self._buckets[key.id] = [tokens - 1.0, now]
