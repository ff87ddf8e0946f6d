"""Keeps a running server's keys in step with its key file, without a restart.

A daemon thread polls the file's identity (inode, size, mtime) every `interval` seconds and
reloads it when that changes, or at once when `request()` is called (the server's SIGHUP).
`keys revoke` and `keys create` replace the file atomically, so a revocation is effective
within about a second. A file that is invalid when reloaded is logged, one ERROR line per
problem, and the keys loaded before stay in force: the server keeps serving.
"""

from __future__ import annotations

import logging
import threading

from graytune.server.access.credentials import KeyFile, file_identity
from graytune.server.access.key_schema import KeyFileError

log = logging.getLogger("graytune.server")


class KeyReloader:
    def __init__(self, keys: KeyFile, interval: float = 1.0):
        self.keys, self.interval = keys, interval
        self.stop = threading.Event()
        self._requested = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-reload", daemon=True)

    def start(self) -> KeyReloader:
        self._thread.start()
        return self

    def request(self) -> None:
        """Reload soon, changed or not. Only sets an event: safe in a signal handler."""
        self._requested.set()

    def close(self) -> None:
        self.stop.set()
        self._requested.set()
        self._thread.join()

    def _run(self) -> None:
        while not self.stop.is_set():
            requested = self._requested.wait(self.interval)
            self._requested.clear()
            if self.stop.is_set():
                return
            if requested or file_identity(self.keys.path) != self.keys.identity:
                self.reload("SIGHUP" if requested else "the file changed")

    def reload(self, reason: str) -> bool:
        """Reloads the key file now; False (logged, previous keys kept) when it is invalid."""
        try:
            changes = self.keys.reload()
        except KeyFileError as e:
            for problem in e.problems:
                log.error("key file not reloaded (%s): %s", reason, problem)
            log.error("keeping the %d keys loaded before from %s", len(self.keys.keys), self.keys.path)
            return False
        summary = "; ".join(f"{what} {', '.join(ids)}" for what, ids in zip(changes._fields, changes) if ids)
        log.info(
            "keys reloaded from %s (%s): %d keys (%s)",
            self.keys.path,
            reason,
            len(self.keys.keys),
            summary or "no changes",
        )
        return True
