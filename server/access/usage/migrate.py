"""`graytune-server usage migrate --from A --to B`: copies a usage store into an empty one, e.g.
the SQLite file of one host into the PostgreSQL of a fleet (or back). Stop the servers on A first.

Copied: the usage of every key and the call ids charged within the last day, so a client's
retry across the move still joins its charge. Not copied: rate buckets (they refill in a second).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from graytune.server.access.usage import open_store, redacted, store_errors
from graytune.server.access.usage.engine import SCHEMA_LOCK, UsageDb

COPIED = ("usage", "gradient_usage", "call_charges")  # in SCHEMA's column order on both engines


class NotEmpty(Exception):
    """The target store holds usage already: a copy would mix two stores' figures."""


def migrate(source: UsageDb, target: UsageDb) -> dict[str, int]:
    """Copies every row of COPIED from `source` into an empty `target`, in one transaction.
    -> rows copied per table."""
    with source.reading() as sql:
        rows = {table: sql.execute(f"SELECT * FROM {table}").fetchall() for table in COPIED}
    with target.transaction(SCHEMA_LOCK) as sql:
        held = {table: sql.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in COPIED}
        if any(held.values()):
            raise NotEmpty(
                f"{target.location} holds usage already ({', '.join(f'{n} rows in {t}' for t, n in held.items())}); "
                "migrate into an empty store"
            )
        for table, table_rows in rows.items():
            for row in table_rows:
                sql.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", tuple(row))
    return {table: len(table_rows) for table, table_rows in rows.items()}


def main(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="graytune-server usage", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    move = sub.add_parser("migrate", help="copy a usage store into an empty one")
    move.add_argument("--from", dest="source", required=True, help="an SQLite file or a postgresql:// URL")
    move.add_argument("--to", dest="target", required=True, help="an SQLite file or a postgresql:// URL, empty")
    args = p.parse_args(argv)
    errors: tuple[type[Exception], ...] = (NotEmpty, *store_errors(args.source), *store_errors(args.target))
    try:
        with (
            contextlib.closing(open_store(args.source)) as source,
            contextlib.closing(open_store(args.target)) as target,
        ):
            copied = migrate(source, target)
    except errors as e:
        print(f"graytune-server usage: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"copied the usage of {copied['usage']} keys (samples), {copied['gradient_usage']} keys (gradient "
        f"samples) and {copied['call_charges']} charged call ids from {redacted(args.source)} to "
        f"{redacted(args.target)}"
    )
