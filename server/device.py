"""The device queue: one thread runs every tensor operation, taking callers in turn.

One thread means one OpenMP pool (gRPC worker threads would each start their own and spin on
the same cores) and calls that queue rather than compete. Pending work is kept per caller and
taken round-robin, so a caller with a backlog of calls cannot starve one with a single call.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from typing import Callable, Deque, Tuple


class DeviceQueue:
    def __init__(self):
        self._pending: "OrderedDict[str, Deque[Tuple[Callable, Future]]]" = OrderedDict()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="device", daemon=True)
        self._thread.start()

    def run(self, caller: str, fn: Callable, *args):
        """Runs fn(*args) on the device thread, in `caller`'s turn; returns or raises its result."""
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the device queue is closed")
            self._pending.setdefault(caller, deque()).append((lambda: fn(*args), future))
            self._ready.notify()
        return future.result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()

    def _next(self) -> Tuple[Callable, Future]:
        """The oldest call of the caller whose turn it is; that caller goes to the back."""
        caller, calls = next(iter(self._pending.items()))
        work = calls.popleft()
        del self._pending[caller]
        if calls:
            self._pending[caller] = calls  # re-inserted at the end: the next caller goes first
        return work

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:
                    return
                work, future = self._next()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as e:  # handed to the caller's thread, which raises it
                    future.set_exception(e)
