"""A process's memory as Linux reports it (/proc/PID/status): now, at its peak, or the peak over
a stretch of time sampled from a thread."""

from __future__ import annotations

import threading
from pathlib import Path


def status_bytes(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (resident now) or VmHWM (resident at its peak so far) of a process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"process {pid}: no {field} in /proc/{pid}/status")


class PeakMemory:
    """The largest VmRSS of a process, sampled every 5 ms while in the `with` block (VmHWM
    cannot be reset, so it only gives the peak since the process started)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._done = pid, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, status_bytes(self.pid))
            if self._done.wait(0.005):
                return

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
