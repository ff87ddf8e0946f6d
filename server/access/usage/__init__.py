"""Usage: budgets charged exactly once per call, and rate buckets, in a store every replica
shares: an SQLite file (one host, the default) or PostgreSQL (a fleet)."""

from __future__ import annotations

from pathlib import Path

from graytune.server.access.usage.budgets import GRADIENTS, SAMPLES, Attempt, Budgets, budget_of
from graytune.server.access.usage.engine import SchemaError, UsageDb, is_url, redacted

__all__ = ["GRADIENTS", "SAMPLES", "Attempt", "Budgets", "SchemaError", "UsageDb", "budget_of"]
__all__ += ["is_url", "open_store", "redacted", "store_errors"]


def store_errors(location: str | Path) -> tuple[type[Exception], ...]:
    """What opening or using the store at `location` may raise: out of reach, locked, not a
    store, a newer schema (ModuleNotFoundError: psycopg, from the `fleet` extra, is missing)."""
    import sqlite3

    errors: tuple[type[Exception], ...] = (sqlite3.Error, SchemaError, OSError)
    if is_url(location):
        try:
            import psycopg
        except ModuleNotFoundError:
            return (*errors, ModuleNotFoundError)
        errors += (psycopg.Error,)
    return errors


def open_store(
    location: str | Path,
    timeout: float = 30.0,
    connections: int = 8,
    connect_wait: float = 0.0,
    password_file: Path | None = None,
) -> UsageDb:
    """The store at `location`, its schema created or upgraded. `timeout`: seconds any one
    operation may wait for a lock, a connection or an answer; `connect_wait`: seconds to wait
    for a PostgreSQL server that is not listening yet; `password_file`: PostgreSQL's password."""
    if is_url(location):
        from graytune.server.access.usage.postgres import PostgresUsageDb  # psycopg: the `fleet` extra

        password = None if password_file is None else password_file.read_text().rstrip("\n")
        return PostgresUsageDb(str(location), timeout, connections, connect_wait, password)
    from graytune.server.access.usage.sqlite import SqliteUsageDb

    return SqliteUsageDb(location, timeout)
