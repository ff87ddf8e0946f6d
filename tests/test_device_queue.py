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
