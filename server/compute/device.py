"""The device queue: one thread runs every tensor operation, taking callers in turn, and merges
compatible calls of different callers into one batch.

One thread means one OpenMP pool (gRPC worker threads would each start their own and spin on
the same cores) and calls that queue rather than compete. Pending work is kept per caller and
taken round-robin, so a caller with a backlog of calls cannot starve one with a single call.
Work that names a `group` runs together with every pending work of the same group (up to
`max_samples`), through the group's `run_group`: small concurrent requests become one batch.
A batch waits briefly for members it expects or that are still being received (`arriving`),
but only while the device has nothing else to do, unless splitting it would cost more.
Work whose deadline passes before it starts, or whose caller is gone (its `CancelScope`
cancelled), is dropped: an abandoned call costs no compute.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from graytune.server.compute.errors import CallerGone, DeadlineExceeded, ShuttingDown

log = logging.getLogger(__name__)


class CancelScope:
    """The work of one call, cancelled together when its caller is gone (work already
    running finishes; work still queued is dropped)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._futures: list[Future] = []
        self.cancelled = False

    def add(self, future: Future) -> None:
        with self._lock:
            self._futures.append(future)
            if self.cancelled:
                future.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for future in self._futures:
                future.cancel()


@dataclass(eq=False)
class Work:
    run: Callable[[], Any] | None = None  # the work alone
    group: Hashable | None = None  # pending works of one group run as one batch
    run_group: Callable[[list[Work]], list[Any]] | None = None  # a result or exception per work
    payload: Any = None  # what run_group needs of this work
    samples: int = 1
    expected: int = 1  # group members worth waiting `linger` seconds for
    # Wait for expected members even while other work is pending: a split batch would cost
    # more than the wait (a backward pass over a merged graph runs whole, for any members).
    hold_device: bool = False
    future: Future = field(default_factory=Future)


class DeviceQueue:
    def __init__(self, max_samples: int = 256, linger: float = 0.02, arrival_wait: float = 0.2):
        """A batch waits `linger` s for the members it `expected`, and up to `arrival_wait` s for
        members still being received (see `arriving`)."""
        self.max_samples = max_samples
        self.linger = linger
        self.arrival_wait = arrival_wait
        self._pending: OrderedDict[str, deque[Work]] = OrderedDict()
        self._arriving: dict[object, Hashable] = {}  # token -> group of a work being received
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="device", daemon=True)
        self._thread.start()

    def run(self, caller: str, fn: Callable, *args, deadline: float | None = None):
        """Runs fn(*args) on the device thread, in `caller`'s turn; returns or raises its result."""
        return self.submit(caller, Work(run=lambda: fn(*args)), deadline)

    @contextlib.contextmanager
    def arriving(self, group: Hashable) -> Iterator[object]:
        """Announces a work of `group` on its way (its request still being received). Until it
        is submitted with the token this yields (or the block ends), a batch of that group
        waits for it, up to `arrival_wait` s."""
        token = object()
        with self._ready:
            self._arriving[token] = group
        try:
            yield token
        finally:
            with self._ready:
                if self._arriving.pop(token, None) is not None:
                    self._ready.notify_all()

    def submit(
        self,
        caller: str,
        work: Work,
        deadline: float | None = None,
        scope: CancelScope | None = None,
        arrival: object | None = None,
    ):
        """Queues the work and waits for its result. Work not yet started when `deadline`
        (time.monotonic) passes is dropped: DeadlineExceeded; when `scope` is cancelled (the
        caller left): CallerGone; when the queue closes: ShuttingDown. Started work runs to
        its end. `arrival`: the token `arriving` gave for this work, now arrived."""
        with self._ready:
            if self._closed:
                raise ShuttingDown("the server is shutting down; retry against a restarted server")
            self._arriving.pop(arrival, None)
            self._pending.setdefault(caller, deque()).append(work)
            self._ready.notify_all()
        if scope is not None:
            scope.add(work.future)
        queued = time.monotonic()
        try:
            return work.future.result(None if deadline is None else max(0.0, deadline - queued))
        except FutureTimeout:
            if not work.future.cancel():  # already running: its result is on the way
                return work.future.result()
            raise DeadlineExceeded(
                f"the call's deadline passed after {time.monotonic() - queued:.1f} s "
                f"waiting for the device; its work was dropped unstarted"
            ) from None
        except CancelledError:
            if self._closed:
                raise ShuttingDown(
                    "the server shut down before the device took up this call; retry against a restarted server"
                ) from None
            raise CallerGone("the caller left before the device took up its work") from None

    def pending(self) -> int:
        """Works queued and not yet started, all callers."""
        with self._ready:
            return sum(len(works) for works in self._pending.values())

    def close(self) -> None:
        """Lets running work finish and drops what is still queued: its callers are told the
        server is shutting down (ShuttingDown), so each call ends with a status and a refund."""
        with self._ready:
            self._closed = True
            for works in self._pending.values():
                for work in works:
                    work.future.cancel()
            self._pending.clear()
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

    def _take_group(self, first: Work, members: list[Work]) -> None:
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

    def _gather(self, first: Work) -> list[Work]:
        members, start = [first], time.monotonic()
        while True:
            self._take_group(first, members)
            waited = time.monotonic() - start
            busy = bool(self._pending)  # other work waits: idling would delay it
            wait_expected = len(members) < first.expected and waited < self.linger and (first.hold_device or not busy)
            wait_arriving = first.group in self._arriving.values() and waited < self.arrival_wait and not busy
            full = sum(m.samples for m in members) >= self.max_samples
            if self._closed or full or not (wait_expected or wait_arriving):
                return members
            self._ready.wait((self.linger if wait_expected else self.arrival_wait) - waited)

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
    def _execute(first: Work, members: list[Work]) -> None:
        members = [m for m in members if m.future.set_running_or_notify_cancel()]  # callers gone: dropped
        if not members:
            return
        start = time.perf_counter()
        try:
            if first.group is None:
                assert first.run is not None  # a work alone has `run`, a group's works `run_group`
                results = [first.run()]
            else:
                assert first.run_group is not None
                results = first.run_group(members)
        except BaseException as e:  # handed to the callers' threads, which raise it
            results = [e] * len(members)
        if first.group is not None:
            log.debug(
                "batch of %d works, %d samples: %.1f ms",
                len(members),
                sum(m.samples for m in members),
                (time.perf_counter() - start) * 1e3,
            )
        for member, result in zip(members, results):
            if isinstance(result, BaseException):
                member.future.set_exception(result)
            else:
                member.future.set_result(result)
