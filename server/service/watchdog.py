"""Ends calls that outlive the server's limit on call time, whatever they are blocked on.

A call waiting for the device is dropped by its own deadline (DeviceQueue.submit). A call
stuck on its stream (a client that stops sending or stops reading) holds a worker thread and a
concurrency slot; no deadline reaches it there, so one thread watches every call's limit and
expires the calls that pass it.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable, List


class Watchdog:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._due: List[list] = []  # heap of [deadline, order, expire or None once done]
        self._order = itertools.count()
        self._wake = threading.Condition()
        threading.Thread(target=self._loop, name="watchdog", daemon=True).start()

    def watch(self, deadline: float, expire: Callable[[], None]) -> list:
        """Calls `expire()` at `deadline` (on the clock) unless `done(entry)` came first."""
        entry = [deadline, next(self._order), expire]
        with self._wake:
            heapq.heappush(self._due, entry)
            self._wake.notify()
        return entry

    def done(self, entry: list) -> None:
        with self._wake:
            entry[2] = None  # the entry stays in the heap until due; its call is let go now

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > self.clock():
                    self._wake.wait(None if not self._due else self._due[0][0] - self.clock())
                expire = heapq.heappop(self._due)[2]
            if expire is not None:
                expire()
