"""Per-key query budgets and rate buckets in the usage store, so a restart does not refill them
and every replica sharing the store sees the same figures.

Two budgets per key, each optional: samples embedded (Embed and Forward) and gradient samples
(Backward: what model extraction needs most).

Charging is exactly-once per logical call and cannot be gamed:
- A charge is identified by (key, call id, kind, digest of the request). The client sends the
  same call id on every retry of a call; a retry of the *same request* (same digest) joins the
  earlier charge instead of paying again. A call id reused for another request is another
  digest, so it is charged as a new call (Stripe's idempotency keys, made lenient: refusing it
  would strand a client whose retry legitimately differs, e.g. a Backward after re-running
  Forward).
- The charge is reserved before the work (one transaction, serialised per key across every
  replica, checks and adds it, so concurrent calls cannot overspend) and settled when the reply
  has been handed to gRPC. Each attempt on a charge holds it; a failed attempt lets go of it,
  and the charge is given back only when no attempt holds it any more and none was served. So a
  refund returns exactly what was charged for this request, once, and never what another
  request (or a served twin) paid.
- Usage never goes below zero: the tables refuse it (CHECK) and refunds clamp.

The SQL here is written once for both backends (usage/sqlite.py, usage/postgres.py): `?`
parameters, no engine-specific functions. Every method is blocking and thread-safe: the server
runs them on its own store threads with a time limit, never on a thread other callers need
(see service/usage_store.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from graytune import error_details
from graytune.server.access.credentials import ApiKey
from graytune.server.access.rate_limit import Bucket, refusal
from graytune.server.access.usage.engine import Sql, UsageDb
from graytune.server.compute.errors import OverLimit

SAMPLES, GRADIENTS = "samples", "gradient samples"
CALL_ID_SECONDS = 24 * 3600  # how long a charged call id is remembered (clients retry for minutes)
TABLES = {SAMPLES: "usage", GRADIENTS: "gradient_usage"}
THIS_CHARGE = "key_id = ? AND call_id = ? AND kind = ? AND digest = ?"  # one charge, by its identity


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
    def __init__(self, db: UsageDb, clock: Callable[[], float] = time.time):
        """`clock`: seconds since the epoch; replicas on several hosts need clocks in step (NTP)
        for the rate buckets they share."""
        self.db, self.clock = db, clock
        self._pruned = 0.0

    def used(self, key_id: str, kind: str = SAMPLES) -> int:
        with self.db.reading() as sql:  # never waits for a writer
            return _used(sql, key_id, kind)

    def remaining(self, key: ApiKey, kind: str = SAMPLES) -> int | None:
        budget = budget_of(key, kind)
        return None if budget is None else max(0, budget - self.used(key.id, kind))

    def refuse_if_spent(self, key: ApiKey, kind: str, call_id: str) -> None:
        """Refuses a call before its request is read when the key has nothing left of `kind`,
        unless `call_id` holds a charge already (the retry of a call that was charged)."""
        budget = budget_of(key, kind)
        if budget is None or self.remaining(key, kind) != 0:
            return
        with self.db.reading() as sql:
            charged = sql.execute(
                "SELECT 1 FROM call_charges WHERE key_id = ? AND call_id = ? AND kind = ?", (key.id, call_id, kind)
            ).fetchone()
        if charged is None:
            raise _spent(key, kind, budget, budget)

    def charge(self, key: ApiKey, samples: int, call_id: str, digest: str, kind: str = SAMPLES) -> Attempt | None:
        """Reserves `samples` of the key's budget of `kind` for this request, or refuses the
        call whole (OverLimit). None for a key without that budget."""
        budget = budget_of(key, kind)
        if budget is None:
            return None
        ident = (key.id, call_id, kind, digest)
        with self.db.transaction(key.id) as sql:
            row = sql.execute(f"SELECT samples FROM call_charges WHERE {THIS_CHARGE}", ident).fetchone()
            if row is not None:  # a retry of this very request: it joins the earlier charge
                # `at` moves on: an attempt in flight keeps its charge from release_abandoned
                sql.execute(
                    f"UPDATE call_charges SET holders = holders + 1, at = ? WHERE {THIS_CHARGE}", (self.clock(), *ident)
                )
                return Attempt(*ident, int(row[0]), new=False)
            used = _used(sql, key.id, kind)
            if used + samples > budget:
                raise _spent(key, kind, budget, used, samples)
            table = TABLES[kind]
            sql.execute(
                f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT (key_id) DO UPDATE "
                f"SET samples = {table}.samples + excluded.samples",
                (key.id, samples),
            )
            sql.execute("INSERT INTO call_charges VALUES (?, ?, ?, ?, ?, 1, 0, ?)", (*ident, samples, self.clock()))
            self._prune(sql)
        return Attempt(*ident, samples, new=True)

    def settle(self, attempt: Attempt) -> None:
        """The attempt's reply was handed over: the charge stands for good."""
        with self.db.transaction(attempt.key_id) as sql:
            sql.execute(f"UPDATE call_charges SET {LET_GO}, served = 1 WHERE {THIS_CHARGE}", _ident(attempt))

    def refund(self, attempt: Attempt) -> int:
        """The attempt failed before its reply was complete: it lets go of the charge, which is
        given back when no other attempt holds it and none was served. -> samples given back."""
        ident = _ident(attempt)
        with self.db.transaction(attempt.key_id) as sql:
            sql.execute(f"UPDATE call_charges SET {LET_GO} WHERE {THIS_CHARGE}", ident)
            row = sql.execute(
                f"SELECT samples, holders, served FROM call_charges WHERE {THIS_CHARGE}", ident
            ).fetchone()
            if row is None or row[1] > 0 or row[2]:
                return 0
            sql.execute(f"DELETE FROM call_charges WHERE {THIS_CHARGE}", ident)
            _give_back(sql, attempt.key_id, attempt.kind, int(row[0]))
            return int(row[0])

    def release_abandoned(self, seconds: float) -> int:
        """Gives back the charges that no attempt settled or refunded within `seconds` of their
        last attempt: their server died holding them (a crash, SIGKILL), since a call still
        running that long has been ended by its server. -> how many."""
        with self.db.reading() as sql:
            abandoned = sql.execute(
                "SELECT key_id, call_id, kind, digest, samples FROM call_charges "
                "WHERE served = 0 AND holders > 0 AND at < ?",
                (self.clock() - seconds,),
            ).fetchall()
        released = 0
        for key_id, call_id, kind, digest, samples in abandoned:
            ident = (key_id, call_id, kind, digest)
            with self.db.transaction(key_id) as sql:
                # Still abandoned: not settled, refunded or joined by a retry since it was read.
                gone = sql.execute(
                    f"DELETE FROM call_charges WHERE {THIS_CHARGE} AND served = 0 AND holders > 0 AND at < ?",
                    (*ident, self.clock() - seconds),
                )
                if gone.rowcount:
                    _give_back(sql, key_id, kind, int(samples))
                    released += 1
        return released

    def take_call(self, key: ApiKey) -> None:
        """Takes one call from the key's rate bucket, shared by every replica on this store, or
        refuses the call (OverLimit, with when to retry)."""
        rate = key.rate_per_second
        if rate is None:
            return
        with self.db.transaction(key.id) as sql:
            row = sql.execute("SELECT tokens, at FROM rate_buckets WHERE key_id = ?", (key.id,)).fetchone()
            bucket = Bucket(rate) if row is None else Bucket(rate, float(row[0]), float(row[1]))
            wait = bucket.take(self.clock())
            if not wait:
                sql.execute(
                    "INSERT INTO rate_buckets VALUES (?, ?, ?) ON CONFLICT (key_id) DO UPDATE "
                    "SET tokens = excluded.tokens, at = excluded.at",
                    (key.id, bucket.tokens, bucket.at),
                )
        if wait:
            raise refusal(key, wait)

    def _prune(self, sql: Sql) -> None:
        """Forgets call ids older than CALL_ID_SECONDS, at most once a minute (per process)."""
        now = self.clock()
        if now - self._pruned > 60:
            sql.execute("DELETE FROM call_charges WHERE at < ?", (now - CALL_ID_SECONDS,))
            self._pruned = now


LET_GO = "holders = CASE WHEN holders > 0 THEN holders - 1 ELSE 0 END"  # one attempt less holds the charge


def _ident(attempt: Attempt) -> tuple[str, str, str, str]:
    return attempt.key_id, attempt.call_id, attempt.kind, attempt.digest


def _give_back(sql: Sql, key_id: str, kind: str, samples: int) -> None:
    """A charge's samples returned to the key's usage, which never goes below zero."""
    sql.execute(
        f"UPDATE {TABLES[kind]} SET samples = CASE WHEN samples > ? THEN samples - ? ELSE 0 END WHERE key_id = ?",
        (samples, samples, key_id),
    )


def _used(sql: Sql, key_id: str, kind: str) -> int:
    row = sql.execute(f"SELECT samples FROM {TABLES[kind]} WHERE key_id = ?", (key_id,)).fetchone()
    return int(row[0]) if row else 0


def budget_of(key: ApiKey, kind: str) -> int | None:
    return key.budget_samples if kind == SAMPLES else key.gradient_budget_samples


def _spent(key: ApiKey, kind: str, budget: int, used: int, samples: int | None = None) -> OverLimit:
    needs = "" if samples is None else f" and this call needs {samples}"
    return OverLimit(
        f"budget: key {key.id} has {budget - used} of {budget} {kind} left{needs}; budgets do "
        f"not refill, ask the model owner for more",
        error_details.BUDGET_EXHAUSTED,
    )
