"""`graytune-server usage migrate`, as the owner runs it: an SQLite store into PostgreSQL and back,
every row the same; a store that holds usage already is refused."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys

from graytune.server.access.credentials import ApiKey
from graytune.server.access.usage import GRADIENTS, Budgets, open_store
from graytune.server.access.usage.migrate import COPIED

KEY = ApiKey("k1", "0" * 64, "graybox", budget_samples=1000, gradient_budget_samples=100)


def migrate(source, target) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "graytune.server.cli", "usage", "migrate", "--from", source, "--to", target]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def rows(location) -> dict:
    with contextlib.closing(open_store(location)) as db, db.reading() as sql:
        return {table: sorted(map(tuple, sql.execute(f"SELECT * FROM {table}").fetchall())) for table in COPIED}


def charge(location, *args) -> None:
    with contextlib.closing(open_store(location)) as db:
        budgets = Budgets(db)
        budgets.settle(budgets.charge(*args))


def test_usage_migrates_into_postgresql_and_back(tmp_path, postgres):
    source = str(tmp_path / "keys.usage.sqlite")
    with contextlib.closing(open_store(source)) as db:
        budgets = Budgets(db)
        budgets.settle(budgets.charge(KEY, 30, "call-1", "digest-a"))
        budgets.charge(KEY, 7, "call-2", "digest-b")  # in flight when the servers stopped
        budgets.settle(budgets.charge(KEY, 5, "call-3", "digest-c", GRADIENTS))
    fleet = postgres.create_database("migrated")
    done = migrate(source, fleet)
    assert done.returncode == 0, done.stderr
    assert "copied the usage of 1 keys (samples), 1 keys (gradient samples) and 3 charged call ids" in done.stdout
    assert rows(fleet) == rows(source)
    with contextlib.closing(open_store(fleet)) as db:
        assert not Budgets(db).charge(KEY, 30, "call-1", "digest-a").new  # a retry still joins
    back = str(tmp_path / "back.sqlite")
    assert migrate(fleet, back).returncode == 0
    assert rows(back) == rows(fleet)


def test_a_store_holding_usage_is_not_overwritten(tmp_path, postgres):
    source, target = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")
    charge(source, KEY, 1, "a", "d")
    charge(target, KEY, 2, "b", "d")
    refused = migrate(source, target)
    assert refused.returncode == 2
    assert f"{target} holds usage already (1 rows in usage, 0 rows in gradient_usage, 1 rows in call_charges)" in (
        refused.stderr
    )
    assert sqlite3.connect(target).execute("SELECT samples FROM usage").fetchall() == [(2,)]
    unreachable = migrate(source, "postgresql://nobody@127.0.0.1:1/none")
    assert unreachable.returncode == 2 and "postgresql://nobody@127.0.0.1:1/none" in unreachable.stderr
