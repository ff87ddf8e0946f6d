"""`graytune train --nproc N`: the command again in N processes of one data-parallel run.

Each process gets the environment torchrun gives its own (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so `distributed.from_environment` joins them
either way. Not torchrun itself: its agent sends a Ctrl-C on to its processes a second time
(each takes a first Ctrl-C as "checkpoint, then stop" and a second as "stop at once"), and
reports a failed process in a traceback of its own after that process's one-line error.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

# Seconds the other processes get to end by themselves once one has failed: a Ctrl-C or an
# unreadable file stops every process at the same step, process 0 checkpointing it first.
GRACE_SECONDS = 60.0


def launch(nproc: int, argv: Sequence[str]) -> int:
    """`python -m graytune.client.cli ARGV` in `nproc` processes; -> the exit status of the
    first to fail (a shell's 128 + N for a signal N), the others stopped if they have not ended
    within GRACE_SECONDS of it; 0 if none failed."""
    common = {
        **os.environ,
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),  # process 0's rendezvous store listens there
    }
    command = [sys.executable, "-m", "graytune.client.cli", *argv]
    # Ctrl-C reaches every process of the terminal's group: each stops itself, with a checkpoint.
    # This one waits for them. (A handler rather than "ignored", which would pass on to them.)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        processes = [
            subprocess.Popen(command, env={**common, "RANK": str(rank), "LOCAL_RANK": str(rank)})
            for rank in range(nproc)
        ]
        ended: queue.SimpleQueue[subprocess.Popen] = queue.SimpleQueue()

        def wait(process: subprocess.Popen) -> None:
            process.wait()
            ended.put(process)

        for process in processes:
            threading.Thread(target=wait, args=(process,), daemon=True).start()
        status, deadline = 0, None
        for _ in processes:
            try:
                code = ended.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic())).returncode
            except queue.Empty:  # still running past the grace: waiting for the failed one in a collective
                for other in processes:
                    if other.poll() is None:
                        other.terminate()
                code = ended.get().returncode
            if code != 0 and status == 0:
                status, deadline = (code if code > 0 else 128 - code), time.monotonic() + GRACE_SECONDS
        return status
    finally:
        signal.signal(signal.SIGINT, previous)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
