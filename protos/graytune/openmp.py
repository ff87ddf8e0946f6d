"""OpenMP's wait policy for a process that mostly waits on a graytune server.

By default OpenMP (torch's CPU thread pool) keeps idle threads spinning for a while after each
parallel region; in a client that waits on the server, they spin on the cores the server
computes on (2-5% of the server's compute on a shared 2-core host). OpenMP reads the policy once,
when it starts: at torch's import in this process, at a child's start for its environment.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

VARIABLE = "OMP_WAIT_POLICY"


def wait_passively(env: MutableMapping[str, str] = os.environ) -> MutableMapping[str, str]:
    """Idle OpenMP threads sleep, unless `env` already sets a policy: call it before torch is
    imported (this process), or on the environment a child process gets. -> `env`."""
    env.setdefault(VARIABLE, "PASSIVE")
    return env
