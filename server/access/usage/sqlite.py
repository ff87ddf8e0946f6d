"""The embedded usage store: one SQLite file (WAL), shared by the server processes of one host.

Transactions take SQLite's one write lock (BEGIN IMMEDIATE), so they are serialised for every key
at once; reads never wait. Rate buckets stay in each process (`rate_scope` "process"): writing a
bucket per call would cost a synced commit per call.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from graytune.server.access.usage.engine import SCHEMA_LOCK, SCHEMA_VERSION, upgrade

# Version 1 (no version table): usage tables without CHECK, charges without digest or holders.
# Its remembered call ids are dropped (a retry across the upgrade is charged again).
FROM_VERSION_1 = [
    "DROP TABLE IF EXISTS charges",
    "ALTER TABLE usage RENAME TO usage_v1",
    "ALTER TABLE gradient_usage RENAME TO gradient_usage_v1",
]
VERSION_1_TABLES = ("usage", "gradient_usage")


class SqliteUsageDb:
    unavailable: tuple[type[Exception], ...] = (
        sqlite3.OperationalError,
    )  # "database is locked" after the busy timeout
    rate_scope = "process"

    def __init__(self, path: str | Path, busy_timeout: float = 30.0):
        """`busy_timeout`: seconds a statement waits for another process's write lock."""
        self.path, self.location, self.busy_timeout = str(path), str(path), busy_timeout
        self._local = threading.local()
        with self.reading() as db:  # a read: a current file never waits for another's write lock
            current = _version(db) == SCHEMA_VERSION
        if not current:
            with self.transaction(SCHEMA_LOCK) as db:
                version = _version(db)
                old = version is None and "usage" in _tables(db)  # version 1
                if old:
                    for statement in FROM_VERSION_1:
                        db.execute(statement)
                upgrade(db, version, self.location)
                if old:
                    for table in VERSION_1_TABLES:
                        db.execute(f"INSERT INTO {table} SELECT key_id, MAX(0, samples) FROM {table}_v1")
                        db.execute(f"DROP TABLE {table}_v1")

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        yield self._db()

    @contextlib.contextmanager
    def transaction(self, key_id: str) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _version(db: sqlite3.Connection) -> int | None:
    if "schema_version" not in _tables(db):
        return None
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return None if row is None else int(row[0])
