"""Ctrl-C during training: the step in progress finishes and is checkpointed, then the run stops.

An interrupt that lands inside gRPC's own code can leave a lock of the channel held, and the
channel's close then waits forever (seen with a step's tower calls on two threads). So the
first SIGINT only asks the loop to stop at the next step boundary, which loses nothing; a
second one raises KeyboardInterrupt at once, for a user who will not wait.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("graytune.client")


class StopRequest:
    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        # Only where SIGINT means KeyboardInterrupt: not off the main thread, not where it is ignored.
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "interrupt: stopping after the step in progress, with a checkpoint (interrupt again to stop at once)"
        )

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
