"""Per-key rate limits: a token bucket per key.

Where a bucket lives decides what it counts (DescribeResponse.rate_limit_scope): with the SQLite
store each server process keeps its own ("process": behind a balancer of R replicas a key may be
served up to R times its rate); with PostgreSQL the buckets live in the store ("shared": every
replica counts together, see usage/budgets.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from graytune import error_details
from graytune.server.access.credentials import ApiKey
from graytune.server.compute.errors import OverLimit


@dataclass
class Bucket:
    """`rate` calls per second, bursts up to one second's worth (at least one call); full at first."""

    rate: float
    tokens: float = -1.0  # -1: not used yet (full)
    at: float = 0.0  # when `tokens` was counted

    def take(self, now: float) -> float:
        """Takes one call at `now`: 0.0, or the seconds until one is allowed (nothing taken)."""
        capacity = max(1.0, self.rate)
        # A clock behind the last one (another host's) refills nothing rather than going back.
        elapsed = max(0.0, now - self.at)
        tokens = capacity if self.tokens < 0 else min(capacity, self.tokens + elapsed * self.rate)
        if tokens < 1.0:
            return (1.0 - tokens) / self.rate
        self.tokens, self.at = tokens - 1.0, max(now, self.at)
        return 0.0


def refusal(key: ApiKey, wait: float) -> OverLimit:
    return OverLimit(
        f"rate: key {key.id} is limited to {key.rate_per_second:g} calls/s; the next call is allowed in {wait:.2f} s",
        error_details.RATE_LIMITED,
        retry_after=wait,
    )


class RateLimiter:
    """The buckets of this server process."""

    scope = "process"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    async def acquire(self, key: ApiKey) -> None:
        rate = key.rate_per_second
        if rate is None:
            return
        with self._lock:
            bucket = self._buckets.setdefault(key.id, Bucket(rate))
            bucket.rate = rate  # a reloaded key file may have changed it
            wait = bucket.take(self.clock())
        if wait:
            raise refusal(key, wait)
