"""The device queue: one thread runs every tensor operation, taking callers in turn, and merges
compatible calls of different callers into one batch.

One thread means one OpenMP pool (gRPC worker threads would each start their own and spin on
the same cores) and calls that queue rather than compete. Pending work is kept per caller and
taken round-robin, so a caller with a backlog of calls cannot starve one with a single call.
Work that names a `group` runs together with every pending work of the same group (up to
`max_samples`), through the group's `run_group`: small concurrent requests become one batch.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Hashable, List, Optional


@dataclass(eq=False)
class Work:
    run: Optional[Callable[[], Any]] = None  # the work alone
    group: Optional[Hashable] = None  # pending works of one group run as one batch
    run_group: Optional[Callable[[List["Work"]], List[Any]]] = None  # a result or exception per work
    payload: Any = None  # what run_group needs of this work
    samples: int = 1
    expected: int = 1  # group members worth waiting `linger` seconds for
    future: Future = field(default_factory=Future)


class DeviceQueue:
    def __init__(self, max_samples: int = 256, linger: float = 0.02):
        self.max_samples = max_samples
        self.linger = linger
        self._pending: "OrderedDict[str, Deque[Work]]" = OrderedDict()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="device", daemon=True)
        self._thread.start()

    def run(self, caller: str, fn: Callable, *args):
        """Runs fn(*args) on the device thread, in `caller`'s turn; returns or raises its result."""
        return self.submit(caller, Work(run=lambda: fn(*args)))

    def submit(self, caller: str, work: Work):
        with self._ready:
            if self._closed:
                raise RuntimeError("the device queue is closed")
            self._pending.setdefault(caller, deque()).append(work)
            self._ready.notify_all()
        return work.future.result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        self._thread.join()

    def _next(self) -> Work:
        """The oldest work of the caller whose turn it is; that caller goes to the back."""
        caller, works = next(iter(self._pending.items()))
        work = works.popleft()
        del self._pending[caller]
        if works:
            self._pending[caller] = works  # re-inserted at the end: the next caller goes first
        return work

    def _take_group(self, first: Work, members: List[Work]) -> None:
        """Moves pending works of `first`'s group into `members`, callers in turn order."""
        samples = sum(m.samples for m in members)
        for caller in list(self._pending):
            works = self._pending[caller]
            for work in [w for w in works if w.group == first.group]:
                if samples + work.samples > self.max_samples:
                    return
                works.remove(work)
                members.append(work)
                samples += work.samples
            if not works:
                del self._pending[caller]

    def _gather(self, first: Work) -> List[Work]:
        members = [first]
        deadline = time.monotonic() + self.linger
        while True:
            self._take_group(first, members)
            left = deadline - time.monotonic()
            if len(members) >= first.expected or left <= 0 or self._closed:
                return members
            self._ready.wait(left)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:
                    return
                first = self._next()
                members = [first] if first.group is None else self._gather(first)
            self._execute(first, members)

    @staticmethod
    def _execute(first: Work, members: List[Work]) -> None:
        members = [m for m in members if m.future.set_running_or_notify_cancel()]
        try:
            results = [first.run()] if first.group is None else first.run_group(members)
        except BaseException as e:  # handed to the callers' threads, which raise it
            results = [e] * len(members)
        for member, result in zip(members, results):
            if isinstance(result, BaseException):
                member.future.set_exception(result)
            else:
                member.future.set_result(result)
