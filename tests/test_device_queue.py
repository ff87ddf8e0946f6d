"""The device queue runs work on one thread and takes callers in turn."""
from __future__ import annotations

import threading
import time

import pytest

from graytune.server.device import DeviceQueue


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
    gate, order = threading.Event(), []

    def submit(caller, tag, wait=False):
        def work():
            if wait:
                gate.wait(10)
            order.append(tag)
        return threading.Thread(target=device.run, args=(caller, work))

    threads = [submit("busy", "busy-0", wait=True)]
    threads[0].start()
    time.sleep(0.05)  # busy-0 now holds the device
    for i in range(1, 6):
        threads.append(submit("busy", f"busy-{i}"))
        threads[-1].start()
    time.sleep(0.05)
    threads.append(submit("quiet", "quiet"))  # arrives after five queued calls of "busy"
    threads[-1].start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join(10)
    assert order.index("quiet") <= 2, order  # in its turn, not after busy's whole backlog
    assert [t for t in order if t.startswith("busy")] == [f"busy-{i}" for i in range(6)]


def test_pending_works_of_one_group_run_as_one_batch(device):
    from graytune.server.device import Work

    gate, batches = threading.Event(), []

    def run_group(works):
        batches.append(sorted(w.payload for w in works))
        return [w.payload * 10 for w in works]

    results = {}
    blocker = threading.Thread(target=device.run, args=("x", lambda: gate.wait(10)))
    blocker.start()
    time.sleep(0.05)
    threads = []
    for caller, payload in [("a", 1), ("b", 2), ("c", 3)]:
        work = Work(group="g", run_group=run_group, payload=payload)
        t = threading.Thread(target=lambda c=caller, w=work: results.__setitem__(w.payload, device.submit(c, w)))
        t.start()
        threads.append(t)
    time.sleep(0.05)
    gate.set()
    for t in [blocker, *threads]:
        t.join(10)
    assert batches == [[1, 2, 3]]
    assert results == {1: 10, 2: 20, 3: 30}


def test_a_group_waits_briefly_for_expected_members():
    from graytune.server.device import Work

    device, batches = DeviceQueue(linger=1.0), []
    run_group = lambda works: batches.append(len(works)) or [None] * len(works)
    try:
        first = threading.Thread(target=device.submit, args=("a", Work(group="g", run_group=run_group, expected=2)))
        first.start()
        time.sleep(0.05)  # well within the linger
        device.submit("b", Work(group="g", run_group=run_group))
        first.join(10)
        assert batches == [2]
    finally:
        device.close()


def test_a_group_waits_for_a_member_still_arriving(device):
    from graytune.server.device import Work

    batches = []
    run_group = lambda works: batches.append(len(works)) or [None] * len(works)

    announced = threading.Event()

    def arrive_late():
        with device.arriving("g"):
            announced.set()
            time.sleep(0.1)  # receiving its tensors: beyond the linger, within arrival_wait
            device.submit("b", Work(group="g", run_group=run_group))

    late = threading.Thread(target=arrive_late)
    late.start()
    announced.wait(10)
    device.submit("a", Work(group="g", run_group=run_group))
    late.join(10)
    assert batches == [2]


def test_an_arrival_that_never_comes_delays_a_group_at_most_arrival_wait():
    from graytune.server.device import Work

    queue, announced, leave = DeviceQueue(arrival_wait=1.0), threading.Event(), threading.Event()

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
        assert 1.0 <= time.monotonic() - start < 10
        leave.set()
        stalled.join(10)
        start = time.monotonic()
        queue.submit("a", Work(group="g", run_group=run_group))
        assert time.monotonic() - start < 0.5  # the arrival ended with its block: no wait
    finally:
        leave.set()
        queue.close()


def test_a_group_does_not_idle_for_arrivals_while_other_work_waits():
    from graytune.server.device import Work

    queue, gate, announced, leave = DeviceQueue(arrival_wait=2.0), *(threading.Event() for _ in range(3))

    def announce_and_stall():
        with queue.arriving("g"):
            announced.set()
            leave.wait(10)

    threads = [threading.Thread(target=announce_and_stall),
               threading.Thread(target=queue.run, args=("busy", gate.wait, 10))]
    try:
        for t in threads:
            t.start()
        announced.wait(10)
        time.sleep(0.05)  # "busy" holds the device
        done = {}
        group_call = threading.Thread(target=lambda: done.setdefault("a", queue.submit(
            "a", Work(group="g", run_group=lambda works: [time.monotonic()] * len(works)))))
        group_call.start()
        time.sleep(0.05)
        other = threading.Thread(target=lambda: done.setdefault("c", queue.run("c", time.monotonic)))
        other.start()
        time.sleep(0.05)  # both pending behind "busy"
        released = time.monotonic()
        gate.set()
        group_call.join(10)
        other.join(10)
        assert done["a"] - released < 1.0  # ran at once: "c" was waiting, no idling for the arrival
    finally:
        gate.set()
        leave.set()
        for t in threads:
            t.join(10)
        queue.close()
