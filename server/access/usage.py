"""Per-key query budgets, persisted in SQLite so a restart does not refill them.

Two budgets per key, each optional: samples embedded (Embed and Forward) and gradient samples
(Backward: what model extraction needs most). Several server processes may share the file.

Charging is exactly-once per logical call and cannot be gamed:
- A charge is identified by (key, call id, kind, digest of the request). The client sends the
  same call id on every retry of a call; a retry of the *same request* (same digest) joins the
  earlier charge instead of paying again. A call id reused for another request is another
  digest, so it is charged as a new call (Stripe's idempotency keys, made lenient: refusing it
  would strand a client whose retry legitimately differs, e.g. a Backward after re-running
  Forward).
- The charge is reserved before the work (one transaction checks and adds it, so concurrent
  calls cannot overspend) and settled when the reply has been handed to gRPC. Each attempt on a
  charge holds it; a failed attempt lets go of it, and the charge is given back only when no
  attempt holds it any more and none was served. So a refund returns exactly what was charged
  for this request, once, and never what another request (or a served twin) paid.
- Usage never goes below zero: the tables refuse it (CHECK) and refunds clamp.

Every method is blocking and thread-safe (a connection per thread, no process-wide lock): the
server runs them on its own store threads with a time limit, never on a thread other callers
need (see servicer.UsageStore).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from graytune import error_details
from graytune.server.access.credentials import ApiKey
from graytune.server.compute.errors import OverLimit

SAMPLES, GRADIENTS = "samples", "gradient samples"
CALL_ID_SECONDS = 24 * 3600  # how long a charged call id is remembered (clients retry for minutes)
SCHEMA_VERSION = 2
TABLES = {SAMPLES: "usage", GRADIENTS: "gradient_usage"}
THIS_CHARGE = "key_id = ? AND call_id = ? AND kind = ? AND digest = ?"  # one charge, by its identity
SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage (key_id TEXT PRIMARY KEY, samples INTEGER NOT NULL CHECK (samples >= 0));
CREATE TABLE IF NOT EXISTS gradient_usage (key_id TEXT PRIMARY KEY,
                                           samples INTEGER NOT NULL CHECK (samples >= 0));
CREATE TABLE IF NOT EXISTS call_charges (
    key_id TEXT NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL, digest TEXT NOT NULL,
    samples INTEGER NOT NULL CHECK (samples >= 0),
    holders INTEGER NOT NULL CHECK (holders >= 0),  -- attempts in flight on this charge
    served INTEGER NOT NULL DEFAULT 0,              -- 1 once an attempt's reply was handed over
    at REAL NOT NULL,
    PRIMARY KEY (key_id, call_id, kind, digest));
CREATE INDEX IF NOT EXISTS call_charges_at ON call_charges (at);
"""
# Version 1 (no version table): usage tables without CHECK, charges without digest or holders.
# Its remembered call ids are dropped (a retry across the upgrade is charged again).
MIGRATE_FROM_1 = """
DROP TABLE IF EXISTS charges;
ALTER TABLE usage RENAME TO usage_v1;
ALTER TABLE gradient_usage RENAME TO gradient_usage_v1;
"""


@dataclass(frozen=True)
class Attempt:
    """One attempt's hold on a charge: what `settle` or `refund` must be told."""

    key_id: str
    call_id: str
    kind: str
    digest: str
    samples: int  # the charge this attempt holds
    new: bool  # False: it joined an earlier attempt's charge (a retry), and paid nothing itself


class Budgets:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time, busy_timeout: float = 30.0):
        """`busy_timeout`: seconds a statement waits for another process's write lock."""
        self.path, self.clock, self.busy_timeout = str(path), clock, busy_timeout
        self._local = threading.local()
        self._pruned = 0.0
        if not _current(self._db()):  # a read: a current file never waits for another's write lock
            with self._transaction() as db:
                _migrate(db)

    def used(self, key_id: str, kind: str = SAMPLES) -> int:
        return _used(self._db(), key_id, kind)  # a WAL read: never waits for a writer

    def remaining(self, key: ApiKey, kind: str = SAMPLES) -> int | None:
        budget = budget_of(key, kind)
        return None if budget is None else max(0, budget - self.used(key.id, kind))

    def refuse_if_spent(self, key: ApiKey, kind: str, call_id: str) -> None:
        """Refuses a call before its request is read when the key has nothing left of `kind`,
        unless `call_id` holds a charge already (the retry of a call that was charged)."""
        budget = budget_of(key, kind)
        if (
            budget is not None
            and self.remaining(key, kind) == 0
            and not self._db()
            .execute(
                "SELECT 1 FROM call_charges WHERE key_id = ? AND call_id = ? AND kind = ?", (key.id, call_id, kind)
            )
            .fetchone()
        ):
            raise _spent(key, kind, budget, budget)

    def charge(self, key: ApiKey, samples: int, call_id: str, digest: str, kind: str = SAMPLES) -> Attempt | None:
        """Reserves `samples` of the key's budget of `kind` for this request, or refuses the
        call whole (OverLimit). None for a key without that budget."""
        budget = budget_of(key, kind)
        if budget is None:
            return None
        ident = (key.id, call_id, kind, digest)
        with self._transaction() as db:
            row = db.execute(f"SELECT samples FROM call_charges WHERE {THIS_CHARGE}", ident).fetchone()
            if row is not None:  # a retry of this very request: it joins the earlier charge
                db.execute(f"UPDATE call_charges SET holders = holders + 1 WHERE {THIS_CHARGE}", ident)
                return Attempt(*ident, row[0], new=False)
            used = _used(db, key.id, kind)
            if used + samples > budget:
                raise _spent(key, kind, budget, used, samples)
            _add(db, key.id, kind, samples)
            db.execute("INSERT INTO call_charges VALUES (?, ?, ?, ?, ?, 1, 0, ?)", (*ident, samples, self.clock()))
            self._prune(db)
        return Attempt(*ident, samples, new=True)

    def settle(self, attempt: Attempt) -> None:
        """The attempt's reply was handed over: the charge stands for good."""
        with self._transaction() as db:
            db.execute(
                f"UPDATE call_charges SET holders = MAX(0, holders - 1), served = 1 WHERE {THIS_CHARGE}",
                _ident(attempt),
            )

    def refund(self, attempt: Attempt) -> int:
        """The attempt failed before its reply was complete: it lets go of the charge, which is
        given back when no other attempt holds it and none was served. -> samples given back."""
        ident = _ident(attempt)
        with self._transaction() as db:
            db.execute(f"UPDATE call_charges SET holders = MAX(0, holders - 1) WHERE {THIS_CHARGE}", ident)
            row = db.execute(f"SELECT samples, holders, served FROM call_charges WHERE {THIS_CHARGE}", ident).fetchone()
            if row is None or row[1] > 0 or row[2]:
                return 0
            db.execute(f"DELETE FROM call_charges WHERE {THIS_CHARGE}", ident)
            db.execute(
                f"UPDATE {TABLES[attempt.kind]} SET samples = MAX(0, samples - ?) WHERE key_id = ?",
                (row[0], attempt.key_id),
            )
            return int(row[0])

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _prune(self, db: sqlite3.Connection) -> None:
        """Forgets call ids older than CALL_ID_SECONDS, at most once a minute."""
        now = self.clock()
        if now - self._pruned > 60:
            db.execute("DELETE FROM call_charges WHERE at < ?", (now - CALL_ID_SECONDS,))
            self._pruned = now


def _current(db: sqlite3.Connection) -> bool:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return "schema_version" in tables and db.execute("SELECT version FROM schema_version").fetchone() == (
        SCHEMA_VERSION,
    )


def _migrate(db: sqlite3.Connection) -> None:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    old = "usage" in tables and "schema_version" not in tables
    if old:
        _run(db, MIGRATE_FROM_1)
    _run(db, SCHEMA)
    if old:
        for table in TABLES.values():
            db.execute(f"INSERT INTO {table} SELECT key_id, MAX(0, samples) FROM {table}_v1")
            db.execute(f"DROP TABLE {table}_v1")
    if db.execute("SELECT version FROM schema_version").fetchone() is None:
        db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))


def _run(db: sqlite3.Connection, script: str) -> None:
    """Statements one by one (`executescript` would commit the open transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _ident(attempt: Attempt) -> tuple[str, str, str, str]:
    return attempt.key_id, attempt.call_id, attempt.kind, attempt.digest


def _used(db: sqlite3.Connection, key_id: str, kind: str) -> int:
    row = db.execute(f"SELECT samples FROM {TABLES[kind]} WHERE key_id = ?", (key_id,)).fetchone()
    return int(row[0]) if row else 0


def _add(db: sqlite3.Connection, key_id: str, kind: str, samples: int) -> None:
    db.execute(
        f"INSERT INTO {TABLES[kind]} VALUES (?, ?) ON CONFLICT(key_id) DO UPDATE "
        "SET samples = samples + excluded.samples",
        (key_id, samples),
    )


def budget_of(key: ApiKey, kind: str) -> int | None:
    return key.budget_samples if kind == SAMPLES else key.gradient_budget_samples


def _spent(key: ApiKey, kind: str, budget: int, used: int, samples: int | None = None) -> OverLimit:
    needs = "" if samples is None else f" and this call needs {samples}"
    return OverLimit(
        f"budget: key {key.id} has {budget - used} of {budget} {kind} left{needs}; budgets do "
        f"not refill, ask the model owner for more",
        error_details.BUDGET_EXHAUSTED,
    )
