"""Budgets in each store engine (an SQLite file, a real PostgreSQL): one charge per key, call id
and request digest; refunds give back exactly what the failed request was charged, once; usage
never goes below zero; rate buckets shared by every process on the store."""

from __future__ import annotations

import itertools
import sqlite3
import threading

import psycopg
import pytest

from graytune.server.access.credentials import ApiKey
from graytune.server.access.usage import GRADIENTS, SAMPLES, Budgets, SchemaError, open_store
from graytune.server.compute.errors import OverLimit

KEY = ApiKey("k1", "0" * 64, "graybox", budget_samples=100, gradient_budget_samples=10)


DATABASES = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """An empty store: an SQLite file, or a new database on the test process's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "usage.sqlite")
    return request.getfixturevalue("postgres").create_database(f"usage_{next(DATABASES)}")


@pytest.fixture
def store():
    """open_store, each store it opened closed after the test (PostgreSQL's pools have threads)."""
    opened = []

    def open_(location):
        opened.append(open_store(location))
        return opened[-1]

    yield open_
    for db in opened:
        db.close()


@pytest.fixture
def budgets(location, store):
    return Budgets(store(location))


def test_a_retry_of_the_same_request_joins_its_charge_across_restarts(budgets, location, store):
    first = budgets.charge(KEY, 50, "call-1", "digest-a")
    assert (first.samples, first.new) == (50, True)
    retry = budgets.charge(KEY, 50, "call-1", "digest-a")
    assert (retry.samples, retry.new) == (50, False)  # a retry owes the same charge, not another
    again = Budgets(store(location)).charge(KEY, 50, "call-1", "digest-a")  # another process
    assert not again.new
    assert budgets.used(KEY.id) == 50


def test_a_reused_call_id_with_another_request_is_a_new_charge(budgets):
    budgets.charge(KEY, 30, "same-id", "digest-a")
    other = budgets.charge(KEY, 30, "same-id", "digest-b")
    assert other.new and budgets.used(KEY.id) == 60
    with pytest.raises(OverLimit, match="40 of 100 samples left and this call needs 41"):
        budgets.charge(KEY, 41, "same-id", "digest-c")


def test_a_failed_request_is_refunded_and_may_be_charged_again(budgets):
    attempt = budgets.charge(KEY, 30, "call-1", "d")
    assert budgets.refund(attempt) == 30 and budgets.used(KEY.id) == 0
    assert budgets.charge(KEY, 30, "call-1", "d").new  # the first attempt gave nothing
    assert budgets.used(KEY.id) == 30


def test_a_failing_twin_never_refunds_a_served_call(budgets):
    served = budgets.charge(KEY, 32, "C", "the real request")
    budgets.settle(served)
    twin = budgets.charge(KEY, 32, "C", "the real request")  # the same bytes again, then failing
    assert budgets.refund(twin) == 0
    bogus = budgets.charge(KEY, 8, "C", "a bogus request")  # the same id, other bytes
    assert budgets.refund(bogus) == 8
    assert budgets.refund(bogus) == 0  # a second refund of one attempt gives nothing
    assert budgets.used(KEY.id) == 32


def test_a_charge_held_by_a_retry_in_flight_is_not_given_back(budgets):
    first = budgets.charge(KEY, 20, "call", "d")
    retry = budgets.charge(KEY, 20, "call", "d")  # the client retried while the first still ran
    assert budgets.refund(first) == 0  # the retry may still be served
    budgets.settle(retry)
    assert budgets.used(KEY.id) == 20
    abandoned = budgets.charge(KEY, 5, "other", "d")
    joined = budgets.charge(KEY, 5, "other", "d")
    assert budgets.refund(abandoned) == 0 and budgets.refund(joined) == 5  # neither was served
    assert budgets.used(KEY.id) == 20


def test_usage_never_goes_below_zero(budgets, location):
    attempts = [budgets.charge(KEY, 4, "twin", "d") for _ in range(8)]
    for attempt in attempts:
        budgets.refund(attempt)
    assert budgets.used(KEY.id) == 0
    negative = "UPDATE usage SET samples = -1 WHERE key_id = 'k1'"
    if location.startswith("postgresql://"):
        with psycopg.connect(location) as db, pytest.raises(psycopg.errors.CheckViolation):
            db.execute(negative)
    else:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            sqlite3.connect(location).execute(negative)


def test_concurrent_charges_never_overspend(budgets):
    granted, threads = [], []

    def spend(i):
        try:
            granted.append(budgets.charge(KEY, 7, f"call-{i}", "d"))
        except OverLimit:
            pass

    for i in range(30):
        threads.append(threading.Thread(target=spend, args=(i,)))
        threads[-1].start()
    for t in threads:
        t.join(60)
    assert len(granted) == 100 // 7 and budgets.used(KEY.id) == 7 * (100 // 7)


def test_a_spent_key_is_refused_before_its_request_unless_the_call_was_charged(budgets):
    budgets.charge(KEY, 100, "last", "d")
    budgets.refuse_if_spent(KEY, SAMPLES, "last")  # the retry of the call that spent it goes on
    with pytest.raises(OverLimit, match="0 of 100 samples left; budgets do not refill"):
        budgets.refuse_if_spent(KEY, SAMPLES, "new")
    budgets.refuse_if_spent(KEY, GRADIENTS, "new")  # the other budget is untouched


def test_gradient_samples_are_a_budget_of_their_own(budgets):
    budgets.charge(KEY, 100, "embed", "d")
    assert budgets.charge(KEY, 10, "embed", "d", GRADIENTS).new  # same call id, other kind
    with pytest.raises(OverLimit, match="gradient samples"):
        budgets.charge(KEY, 1, "more", "d", GRADIENTS)
    assert (budgets.used(KEY.id, SAMPLES), budgets.used(KEY.id, GRADIENTS)) == (100, 10)


def test_call_ids_are_forgotten_after_a_day(location, store):
    now = [1000.0]
    budgets = Budgets(store(location), clock=lambda: now[0])
    budgets.charge(KEY, 5, "old", "d")
    now[0] += 2 * 24 * 3600
    budgets.charge(KEY, 5, "new", "d")  # prunes what is older than a day
    assert budgets.charge(KEY, 5, "old", "d").new and budgets.used(KEY.id) == 15


def test_a_version_1_file_keeps_its_usage(tmp_path, store):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE usage (key_id TEXT PRIMARY KEY, samples INTEGER NOT NULL);
        CREATE TABLE gradient_usage (key_id TEXT PRIMARY KEY, samples INTEGER NOT NULL);
        CREATE TABLE charges (key_id TEXT NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL,
                              samples INTEGER NOT NULL, at REAL NOT NULL, PRIMARY KEY (key_id, call_id, kind));
        INSERT INTO usage VALUES ('k1', 60), ('k2', -256);
        INSERT INTO gradient_usage VALUES ('k1', 3);
    """)
    db.close()
    budgets = Budgets(store(path))
    assert (budgets.used("k1"), budgets.used("k1", GRADIENTS), budgets.used("k2")) == (60, 3, 0)
    assert Budgets(store(path)).used("k1") == 60  # opened again: migrated once
    budgets.charge(KEY, 5, "call", "d")  # the version 2 and 3 tables are there
    budgets.take_call(RATED)


RATED = ApiKey("k2", "0" * 64, "graybox", rate_per_second=5.0)


def test_rate_buckets_are_shared_by_every_process_on_the_store(location, store):
    now = [1000.0]
    replicas = [Budgets(store(location), clock=lambda: now[0]) for _ in range(2)]
    for i in range(5):  # a full bucket: one second's worth
        replicas[i % 2].take_call(RATED)
    with pytest.raises(OverLimit, match="limited to 5 calls/s; the next call is allowed in 0.20 s") as refused:
        replicas[1].take_call(RATED)
    assert refused.value.retry_after == pytest.approx(0.2)
    now[0] += 0.2  # one call's worth refilled, counted by whichever replica sees it
    replicas[1].take_call(RATED)
    with pytest.raises(OverLimit):
        replicas[0].take_call(RATED)


def test_a_clock_behind_the_bucket_refills_nothing(location, store):
    clocks = [[1000.0], [990.0]]  # two hosts, the second 10 s behind
    ahead, behind = (Budgets(store(location), clock=lambda c=c: c[0]) for c in clocks)
    for _ in range(5):
        ahead.take_call(RATED)
    with pytest.raises(OverLimit):
        behind.take_call(RATED)


def test_concurrent_calls_take_exactly_the_bucket(location, store):
    replicas = [Budgets(store(location), clock=lambda: 1000.0) for _ in range(2)]
    granted, threads = [], []

    def call(i):
        try:
            replicas[i % 2].take_call(RATED)
            granted.append(i)
        except OverLimit:
            pass

    for i in range(16):
        threads.append(threading.Thread(target=call, args=(i,)))
        threads[-1].start()
    for t in threads:
        t.join(60)
    assert len(granted) == 5


def test_a_store_from_a_newer_graytune_is_refused(budgets, location, store):
    if location.startswith("postgresql://"):
        with psycopg.connect(location) as db:
            db.execute("UPDATE schema_version SET version = 99")
    else:
        with sqlite3.connect(location) as db:
            db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaError, match="schema version 99, written by a newer graytune; this one knows up to 3"):
        store(location)


def test_charges_abandoned_by_a_dead_server_are_given_back(location, store):
    now = [1000.0]
    budgets = Budgets(store(location), clock=lambda: now[0])
    budgets.charge(KEY, 10, "died", "d")  # its server was killed before settling or refunding
    budgets.settle(budgets.charge(KEY, 20, "served", "d"))
    budgets.charge(KEY, 30, "retried", "d")
    now[0] += 500
    budgets.charge(KEY, 30, "retried", "d")  # a retry in flight: the charge is held anew
    budgets.charge(KEY, 5, "recent", "d")
    assert budgets.release_abandoned(400) == 1  # "died" only
    assert budgets.used(KEY.id) == 20 + 30 + 5
    assert budgets.release_abandoned(400) == 0  # given back once
    now[0] += 500
    assert budgets.release_abandoned(400) == 2  # the retry and "recent" died too
    assert budgets.used(KEY.id) == 20
