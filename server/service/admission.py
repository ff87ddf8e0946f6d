"""Calls in flight: a cap for the server and a smaller one per key, so no key can take every
slot. Only the billed calls (Embed, Forward, Backward) count; Describe and the health check
never wait for a slot and are never refused by one.

A call takes its slot before its request is read and keeps it until it ends. It runs on the
event loop: counting needs no lock.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from graytune import error_details
from graytune.server.compute.errors import OverLimit

RETRY_AFTER_SECONDS = 0.5  # a refused caller tries again after this; slots free as calls end


class Admission:
    def __init__(self, max_calls: int, max_calls_per_key: int | None):
        """`max_calls_per_key`: None for no per-key cap (development mode: one caller)."""
        self.max_calls, self.max_calls_per_key = max_calls, max_calls_per_key
        self.in_flight: Counter = Counter()  # caller id -> calls holding a slot
        self.total = 0

    @contextlib.contextmanager
    def slot(self, caller_id: str) -> Iterator[None]:
        mine = self.in_flight[caller_id]
        if self.max_calls_per_key is not None and mine >= self.max_calls_per_key:
            raise OverLimit(
                f"calls in flight: key {caller_id} has {mine}, its limit is "
                f"{self.max_calls_per_key} (--max-calls-per-key); wait for one to end",
                error_details.TOO_MANY_CALLS,
                retry_after=RETRY_AFTER_SECONDS,
            )
        if self.total >= self.max_calls:
            raise OverLimit(
                f"calls in flight: the server has {self.total}, its limit is {self.max_calls} "
                f"(--max-concurrent-calls); retry shortly",
                error_details.TOO_MANY_CALLS,
                retry_after=RETRY_AFTER_SECONDS,
            )
        self.in_flight[caller_id] += 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            self.in_flight[caller_id] -= 1
            if not self.in_flight[caller_id]:
                del self.in_flight[caller_id]
