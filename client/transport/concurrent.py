"""Tower calls of one step issued together: the step waits for the slower, not for the sum.

On a GPU server the client's waits are the step's cost; the image and text towers' Forward
calls are independent, so they go out at once, each on a thread of its own (the gRPC channel is
shared and thread-safe). Autograd records through threads, but grad mode is per thread: each
call runs in the caller's mode, so an evaluation under no_grad stays a gradient-free Embed.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="graytune-tower")


def concurrently(*calls: Callable[[], Any]) -> tuple[Any, ...]:
    """Runs the calls at once (the last on this thread); -> their results, in order."""
    grad = torch.is_grad_enabled()

    def in_callers_mode(call: Callable[[], Any]) -> Any:
        with torch.set_grad_enabled(grad):
            return call()

    futures = [_POOL.submit(in_callers_mode, call) for call in calls[:-1]]
    last = calls[-1]()
    return (*[f.result() for f in futures], last)
