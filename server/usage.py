"""Per-key query budgets (persisted, so a restart does not refill them) and rate limits.

Budgets count samples of Embed and Forward calls (Backward is the second half of a Forward
and costs nothing more). They live in SQLite: each charge is one durable transaction, and
several server processes may share the file.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Dict, Optional

from graytune.server.credentials import ApiKey
from graytune.server.errors import OverLimit


class Budgets:
    def __init__(self, path: Path):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS usage (key_id TEXT PRIMARY KEY, samples INTEGER NOT NULL)")
        self._lock = threading.Lock()

    def used(self, key_id: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT samples FROM usage WHERE key_id = ?", (key_id,)).fetchone()
        return row[0] if row else 0

    def remaining(self, key: ApiKey) -> Optional[int]:
        return None if key.budget_samples is None else max(0, key.budget_samples - self.used(key.id))

    def charge(self, key: ApiKey, samples: int) -> None:
        """Counts `samples` against the key's budget, or refuses the call whole."""
        if key.budget_samples is None:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT samples FROM usage WHERE key_id = ?", (key.id,)).fetchone()
                used = row[0] if row else 0
                if used + samples > key.budget_samples:
                    raise OverLimit(
                        f"budget: key {key.id} has {key.budget_samples - used} of "
                        f"{key.budget_samples} samples left and this call needs {samples}; "
                        f"budgets do not refill, ask the model owner for more")
                self._db.execute("INSERT INTO usage VALUES (?, ?) ON CONFLICT(key_id) DO UPDATE "
                                 "SET samples = samples + excluded.samples", (key.id, samples))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise


class RateLimiter:
    """A token bucket per key: `rate_per_second` calls per second, bursts up to one second's worth."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._buckets: Dict[str, list] = {}  # key id -> [tokens, last refill time]
        self._lock = threading.Lock()

    def acquire(self, key: ApiKey) -> None:
        rate = key.rate_per_second
        if rate is None:
            return
        capacity = max(1.0, rate)
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key.id, [capacity, now])
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key.id] = [tokens, now]
                raise OverLimit(f"rate: key {key.id} is limited to {rate:g} calls/s; the next call "
                                f"is allowed in {(1.0 - tokens) / rate:.2f} s")
            self._buckets[key.id] = [tokens - 1.0, now]
