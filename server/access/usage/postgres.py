"""The usage store of a fleet: PostgreSQL (psycopg 3 and its connection pool), shared by every
replica on every host, rate buckets included (`rate_scope` "shared").

A transaction of a key first takes a transaction-scoped advisory lock on that key, so charges of
one key are serialised across replicas while other keys' run beside them; the lock goes with the
transaction, or with the connection if a replica dies holding it. Statements wait at most
`timeout` seconds for a lock or an answer, and the pool as long for a connection: a store that
is down or stuck raises OperationalError, which the server turns into UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from graytune.server.access.usage.engine import SCHEMA_LOCK, redacted, upgrade


class PostgresUsageDb:
    # No connection, a lock or statement timeout, PoolTimeout (a subclass).
    unavailable: tuple[type[Exception], ...] = (psycopg.OperationalError,)
    rate_scope = "shared"

    def __init__(
        self,
        url: str,
        timeout: float = 2.0,
        connections: int = 8,
        connect_wait: float = 30.0,
        password: str | None = None,
    ):
        """`connect_wait`: seconds to wait for a server that is not listening yet (still starting).
        `password`: when not in the URL, PGPASSWORD or ~/.pgpass (a Secret's file, say)."""
        self.location = redacted(url)
        milliseconds = max(1, round(timeout * 1000))
        settings: dict[str, Any] = {
            "autocommit": True,  # reads see the latest commit; `transaction` opens its own
            "connect_timeout": max(2, round(timeout)),  # libpq's least
            "options": f"-c lock_timeout={milliseconds} -c statement_timeout={milliseconds}",
            "application_name": "graytune-server",
            **({"password": password} if password is not None else {}),
        }
        wait_for_server(url, self.location, settings, connect_wait)
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=connections,
            timeout=timeout,  # for a connection from the pool
            kwargs=settings,
            check=ConnectionPool.check_connection,  # a connection broken by a store restart is replaced
            open=False,
            name="graytune-usage",
        )
        self.pool.open(wait=True, timeout=max(timeout, 5.0))
        try:
            with self.transaction(SCHEMA_LOCK) as sql:
                exists = sql.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone() == (True,)
                row = sql.execute("SELECT version FROM schema_version").fetchone() if exists else None
                upgrade(sql, None if row is None else int(row[0]), self.location)
        except BaseException:
            self.pool.close()  # its threads would otherwise outlive the refusal
            raise

    @contextlib.contextmanager
    def reading(self) -> Iterator[QmarkSql]:
        with self.pool.connection() as connection:
            yield QmarkSql(connection)

    @contextlib.contextmanager
    def transaction(self, key_id: str) -> Iterator[QmarkSql]:
        with self.pool.connection() as connection, connection.transaction():
            sql = QmarkSql(connection)
            sql.execute("SELECT pg_advisory_xact_lock(?)", (lock_number(key_id),))
            yield sql

    def close(self) -> None:
        self.pool.close()


class QmarkSql:
    """A psycopg connection taking budgets' `?` parameters (their SQL has no other `?` or `%`)."""

    def __init__(self, connection: psycopg.Connection[Any]):
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self.connection.execute(sql.replace("?", "%s"), params)


def wait_for_server(url: str, location: str, settings: dict[str, Any], seconds: float) -> None:
    """Returns once the server accepts a connection; waits up to `seconds` for one that is not
    listening yet (still starting). A server that answers with a refusal (no such database, a
    wrong password) is an error at once."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            psycopg.connect(url, **settings).close()
            return
        except psycopg.OperationalError as e:
            if e.sqlstate is not None:  # the server answered: waiting will not change it
                raise psycopg.OperationalError(f"{location}: {e}") from None
            if time.monotonic() >= deadline:
                reason = " ".join(line.strip() for line in str(e).splitlines())
                waited = f" (waited {seconds:g} s)" if seconds else ""
                raise psycopg.OperationalError(f"{location}: {reason}{waited}") from None
        time.sleep(1.0)  # it may be starting: try again


def lock_number(key_id: str) -> int:
    """The advisory lock of a key: a signed 64-bit number from its id."""
    return int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(), "big", signed=True)
