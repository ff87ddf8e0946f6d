"""Per-key query budgets (persisted, so a restart does not refill them) and rate limits.

Two budgets per key, each optional: samples embedded (Embed and Forward) and gradient samples
(Backward: what model extraction needs most). They live in SQLite: each charge is one durable
transaction, and several server processes may share the file.

A charge is made once per logical call: the client sends the same call id on every retry of a
call, and a call id already charged (by a server that died before answering, say) is not
charged again. A call that fails is refunded, so a caller pays for what it received.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from typing import Dict, Iterator, Optional

from graytune import error_details
from graytune.server.access.credentials import ApiKey
from graytune.server.compute.errors import OverLimit

SAMPLES, GRADIENTS = "samples", "gradient samples"
CALL_ID_SECONDS = 24 * 3600  # how long a charged call id is remembered (clients retry for minutes)
SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (key_id TEXT PRIMARY KEY, samples INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gradient_usage (key_id TEXT PRIMARY KEY, samples INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS charges (key_id TEXT NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL,
                                    samples INTEGER NOT NULL, at REAL NOT NULL,
                                    PRIMARY KEY (key_id, call_id, kind));
CREATE INDEX IF NOT EXISTS charges_at ON charges (at);
"""
TABLES = {SAMPLES: "usage", GRADIENTS: "gradient_usage"}


class Budgets:
    def __init__(self, path, clock=time.time):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self.clock = clock
        self._pruned = 0.0

    def used(self, key_id: str, kind: str = SAMPLES) -> int:
        with self._lock:
            return self._used(key_id, kind)

    def remaining(self, key: ApiKey, kind: str = SAMPLES) -> Optional[int]:
        budget = _budget(key, kind)
        return None if budget is None else max(0, budget - self.used(key.id, kind))

    def charge(self, key: ApiKey, samples: int, call_id: str = "", kind: str = SAMPLES) -> int:
        """Counts `samples` against the key's budget of `kind`, or refuses the call whole.
        Returns the samples now owed by this call: its earlier charge when `call_id` was
        charged before (a retry), never a second one."""
        budget = _budget(key, kind)
        if budget is None:
            return 0
        with self._lock, self._transaction():
            if call_id:
                row = self._db.execute("SELECT samples FROM charges WHERE key_id = ? AND call_id = ? "
                                       "AND kind = ?", (key.id, call_id, kind)).fetchone()
                if row is not None:
                    return row[0]
            used = self._used(key.id, kind)
            if used + samples > budget:
                raise OverLimit(
                    f"budget: key {key.id} has {budget - used} of {budget} {kind} left and this "
                    f"call needs {samples}; budgets do not refill, ask the model owner for more",
                    error_details.BUDGET_EXHAUSTED)
            self._add(key.id, kind, samples)
            if call_id:
                self._db.execute("INSERT INTO charges VALUES (?, ?, ?, ?, ?)",
                                 (key.id, call_id, kind, samples, self.clock()))
            self._prune()
        return samples

    def refund(self, key: ApiKey, samples: int, call_id: str = "", kind: str = SAMPLES) -> None:
        """Gives back a failed call's charge; its call id may be charged again."""
        with self._lock, self._transaction():
            self._add(key.id, kind, -samples)
            if call_id:
                self._db.execute("DELETE FROM charges WHERE key_id = ? AND call_id = ? AND kind = ?",
                                 (key.id, call_id, kind))

    def _used(self, key_id: str, kind: str) -> int:
        row = self._db.execute(f"SELECT samples FROM {TABLES[kind]} WHERE key_id = ?", (key_id,)).fetchone()
        return row[0] if row else 0

    def _add(self, key_id: str, kind: str, samples: int) -> None:
        self._db.execute(f"INSERT INTO {TABLES[kind]} VALUES (?, ?) ON CONFLICT(key_id) DO UPDATE "
                         "SET samples = samples + excluded.samples", (key_id, samples))

    def _prune(self) -> None:
        """Forgets call ids older than CALL_ID_SECONDS, at most once a minute."""
        now = self.clock()
        if now - self._pruned > 60:
            self._db.execute("DELETE FROM charges WHERE at < ?", (now - CALL_ID_SECONDS,))
            self._pruned = now

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _budget(key: ApiKey, kind: str) -> Optional[int]:
    return key.budget_samples if kind == SAMPLES else key.gradient_budget_samples


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
                wait = (1.0 - tokens) / rate
                raise OverLimit(f"rate: key {key.id} is limited to {rate:g} calls/s; the next call "
                                f"is allowed in {wait:.2f} s", error_details.RATE_LIMITED, retry_after=wait)
            self._buckets[key.id] = [tokens - 1.0, now]
