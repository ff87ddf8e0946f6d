"""What a usage store engine offers the budgets: SQL connections for reading and for
transactions serialised per key, the schema both engines share, and its versions."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

SCHEMA_VERSION = 3
# Types both engines read alike: BIGINT is SQLite's INTEGER, DOUBLE PRECISION its REAL.
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS usage (key_id TEXT PRIMARY KEY, samples BIGINT NOT NULL CHECK (samples >= 0))",
    "CREATE TABLE IF NOT EXISTS gradient_usage (key_id TEXT PRIMARY KEY, samples BIGINT NOT NULL CHECK (samples >= 0))",
    """CREATE TABLE IF NOT EXISTS call_charges (
        key_id TEXT NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL, digest TEXT NOT NULL,
        samples BIGINT NOT NULL CHECK (samples >= 0),
        holders INTEGER NOT NULL CHECK (holders >= 0),  -- attempts in flight on this charge
        served INTEGER NOT NULL DEFAULT 0,              -- 1 once an attempt's reply was handed over
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, call_id, kind, digest))""",
    "CREATE INDEX IF NOT EXISTS call_charges_at ON call_charges (at)",
    # Version 3: rate buckets, shared by the replicas of a PostgreSQL store.
    """CREATE TABLE IF NOT EXISTS rate_buckets (
        key_id TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, at DOUBLE PRECISION NOT NULL)""",
]
SCHEMA_LOCK = "schema"  # the `transaction` key under which a schema is created or upgraded


class Cursor(Protocol):
    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Sql(Protocol):
    """A connection: statements with `?` parameters."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...


class UsageDb(Protocol):
    location: str  # what messages name it by (never a password)
    unavailable: tuple[type[Exception], ...]  # the engine's errors for "no answer": the caller retries
    rate_scope: str  # DescribeResponse.rate_limit_scope: which calls one rate bucket counts

    def reading(self) -> AbstractContextManager[Sql]:
        """A connection for reads that never wait for a writer."""
        ...

    def transaction(self, key_id: str) -> AbstractContextManager[Sql]:
        """A write transaction that no other transaction of `key_id` runs beside, in any process."""
        ...

    def close(self) -> None: ...


class SchemaError(Exception):
    """The store's schema is one this graytune cannot use."""


def upgrade(sql: Sql, found: int | None, location: str) -> None:
    """Creates the schema, or upgrades version `found` to SCHEMA_VERSION (tables only added)."""
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaError(
            f"{location} has usage schema version {found}, written by a newer graytune; this one "
            f"knows up to {SCHEMA_VERSION}: upgrade graytune"
        )
    for statement in SCHEMA:
        sql.execute(statement)
    if found is None:
        sql.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    elif found < SCHEMA_VERSION:
        sql.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


def is_url(location: str | Path) -> bool:
    """A PostgreSQL URL, rather than an SQLite file's path."""
    return str(location).startswith(("postgresql://", "postgres://"))


def redacted(location: str | Path) -> str:
    """The store as messages may name it: never a password (in the URL or its query)."""
    if not is_url(location):
        return str(location)
    parts = urlsplit(str(location))
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{parts.netloc.rpartition('@')[2]}{parts.path}"
