"""The device queue runs work on one thread and takes callers in turn."""

from __future__ import annotations

import threading
import time

import pytest

from graytune.server.compute.device import DeviceQueue, Work

from helpers import wait_until


@pytest.fixture
def device():
    queue = DeviceQueue()
    yield queue
    queue.close()


def test_runs_everything_on_one_thread_and_returns_results(device):
    names = {device.run("a", lambda: threading.current_thread().name) for _ in range(5)}
    assert names == {"device"}
    assert device.run("a", lambda x, y: x * y, 6, 7) == 42


def test_exceptions_reach_the_caller(device):
    with pytest.raises(ZeroDivisionError):
        device.run("a", lambda: 1 / 0)
    assert device.run("a", lambda: "still running") == "still running"


def test_a_backlog_cannot_starve_another_caller(device):
    gate, holding, order = threading.Event(), threading.Event(), []

    def submit(caller, tag, wait=False):
        def work():
            if wait:
                holding.set()
                gate.wait(10)
            order.append(tag)

        thread = threading.Thread(target=device.run, args=(caller, work))
        thread.start()
        return thread

    threads = [submit("busy", "busy-0", wait=True)]
    assert holding.wait(10)  # busy-0 now holds the device
    for i in range(1, 6):
        threads.append(submit("busy", f"busy-{i}"))
        wait_until(lambda: device.pending() == i, 10, "busy's backlog queued in order")
    threads.append(submit("quiet", "quiet"))  # arrives after five queued calls of "busy"
    wait_until(lambda: device.pending() == 6, 10, "quiet queued")
    gate.set()
    for t in threads:
        t.join(10)
    assert order.index("quiet") <= 2, order  # in its turn, not after busy's whole backlog
    assert [t for t in order if t.startswith("busy")] == [f"busy-{i}" for i in range(6)]


def test_pending_works_of_one_group_run_as_one_batch(device):
    gate, batches = threading.Event(), []

    def run_group(works):
        batches.append(sorted(w.payload for w in works))
        return [w.payload * 10 for w in works]

    results, holding = {}, threading.Event()
    blocker = threading.Thread(target=device.run, args=("x", lambda: holding.set() or gate.wait(10)))
    blocker.start()
    assert holding.wait(10)
    threads = []
    for caller, payload in [("a", 1), ("b", 2), ("c", 3)]:
        work = Work(group="g", run_group=run_group, payload=payload)
        t = threading.Thread(target=lambda c=caller, w=work: results.__setitem__(w.payload, device.submit(c, w)))
        t.start()
        threads.append(t)
    wait_until(lambda: device.pending() == 3, 10, "three group members queued")
    gate.set()
    for t in [blocker, *threads]:
        t.join(10)
    assert batches == [[1, 2, 3]]
    assert results == {1: 10, 2: 20, 3: 30}


def take_up(device: DeviceQueue, caller: str, work: Work) -> threading.Thread:
    """Submits `work` from a thread and returns once the device has taken it up: queued behind
    a blocker, then the blocker released, until nothing is pending. No guess at timing."""
    gate, holding = threading.Event(), threading.Event()
    blocker = threading.Thread(target=device.run, args=("blocker", lambda: holding.set() or gate.wait(10)))
    blocker.start()
    assert holding.wait(10)
    thread = threading.Thread(target=device.submit, args=(caller, work))
    thread.start()
    wait_until(lambda: device.pending() == 1, 10, f"{caller} queued")
    gate.set()
    wait_until(lambda: device.pending() == 0, 10, f"{caller} taken up")
    blocker.join(10)
    return thread


def test_a_group_waits_briefly_for_expected_members():
    device, batches = DeviceQueue(linger=30.0), []  # "briefly" is 20 ms in service; long here
    run_group = lambda works: batches.append(len(works)) or [None] * len(works)
    try:
        first = take_up(device, "a", Work(group="g", run_group=run_group, expected=2))
        device.submit("b", Work(group="g", run_group=run_group))  # the member "a" waits for
        first.join(10)
        assert batches == [2]
    finally:
        device.close()


def test_a_group_waits_for_a_member_still_arriving():
    device, batches = DeviceQueue(linger=0.0, arrival_wait=30.0), []
    run_group = lambda works: batches.append(len(works)) or [None] * len(works)
    try:
        with device.arriving("g") as arrival:  # a member's tensors still being received
            first = take_up(device, "a", Work(group="g", run_group=run_group))
            device.submit("b", Work(group="g", run_group=run_group), arrival=arrival)
        first.join(10)
        assert batches == [2]
    finally:
        device.close()


def test_an_arrival_that_never_comes_delays_a_group_at_most_arrival_wait():
    queue, announced, leave = DeviceQueue(arrival_wait=3.0), threading.Event(), threading.Event()

    def announce_and_stall():
        with queue.arriving("g"):  # announced, never submitted
            announced.set()
            leave.wait(10)

    stalled = threading.Thread(target=announce_and_stall)
    stalled.start()
    try:
        announced.wait(10)
        run_group = lambda works: [None] * len(works)
        start = time.monotonic()
        queue.submit("a", Work(group="g", run_group=run_group))
        assert 3.0 <= time.monotonic() - start < 30
        leave.set()
        stalled.join(10)
        start = time.monotonic()
        queue.submit("a", Work(group="g", run_group=run_group))
        assert time.monotonic() - start < 3.0  # the arrival ended with its block: no wait
    finally:
        leave.set()
        queue.close()


def test_a_group_does_not_idle_for_arrivals_while_other_work_waits():
    queue, gate, announced, leave, holding = DeviceQueue(arrival_wait=30.0), *(threading.Event() for _ in range(4))

    def announce_and_stall():
        with queue.arriving("g"):
            announced.set()
            leave.wait(10)

    threads = [
        threading.Thread(target=announce_and_stall),
        threading.Thread(target=queue.run, args=("busy", lambda: holding.set() or gate.wait(10))),
    ]
    try:
        for t in threads:
            t.start()
        assert announced.wait(10) and holding.wait(10)  # "busy" holds the device
        done = {}
        group_call = threading.Thread(
            target=lambda: done.setdefault(
                "a", queue.submit("a", Work(group="g", run_group=lambda works: [time.monotonic()] * len(works)))
            )
        )
        group_call.start()
        wait_until(lambda: queue.pending() == 1, 10, "a queued")
        other = threading.Thread(target=lambda: done.setdefault("c", queue.run("c", time.monotonic)))
        other.start()
        wait_until(lambda: queue.pending() == 2, 10, "a and c queued behind busy")
        released = time.monotonic()
        gate.set()
        group_call.join(10)
        other.join(10)
        assert done["a"] - released < 15.0  # not the 30 s arrival wait: "c" was waiting
    finally:
        gate.set()
        leave.set()
        for t in threads:
            t.join(10)
        queue.close()


def test_work_of_a_caller_gone_is_dropped_unstarted(device):
    from graytune.server.compute.device import CancelScope
    from graytune.server.compute.errors import CallerGone

    gate, holding, ran, scope, failed = threading.Event(), threading.Event(), [], CancelScope(), []
    blocker = threading.Thread(target=device.run, args=("a", lambda: holding.set() or gate.wait(10)))
    blocker.start()
    assert holding.wait(10)

    def leaving_caller():
        try:
            device.submit("b", Work(run=lambda: ran.append("b")), scope=scope)
        except CallerGone as e:
            failed.append(e)

    caller = threading.Thread(target=leaving_caller)
    caller.start()
    wait_until(lambda: device.pending() == 1, 10, "b queued")
    scope.cancel()  # what the servicer does when the call ends: the client left
    caller.join(10)
    gate.set()
    blocker.join(10)
    assert device.run("c", lambda: "c") == "c"
    assert len(failed) == 1 and ran == []


def test_closing_the_queue_tells_queued_callers_the_server_is_shutting_down():
    from graytune.server.compute.errors import ShuttingDown

    device, gate, holding, outcome = DeviceQueue(), threading.Event(), threading.Event(), []
    blocker = threading.Thread(target=device.run, args=("a", lambda: holding.set() or gate.wait(10) or "done"))
    blocker.start()
    assert holding.wait(10)

    def queued():
        try:
            device.run("b", lambda: outcome.append("ran"))
        except ShuttingDown as e:
            outcome.append(e)

    caller = threading.Thread(target=queued)
    caller.start()
    wait_until(lambda: device.pending() == 1, 10, "b queued")
    closing = threading.Thread(target=device.close)
    closing.start()
    caller.join(10)
    gate.set()  # the running work finishes
    closing.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], ShuttingDown)
    with pytest.raises(ShuttingDown):
        device.run("c", lambda: None)
