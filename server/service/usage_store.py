"""The usage store as the event loop sees it: each operation on a store thread, within a
time limit, so no caller waits on another's lock.

A store that does not answer within `timeout` seconds (another process holding its write
lock, a slow disk, a PostgreSQL server down or out of reach) makes billed calls UNAVAILABLE
(the client retries with the same call id) — never free, never INTERNAL. A charge that
completes after its call gave up on it is let go again, so a slow store never bills a call that
was not served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from graytune.server.access.credentials import ApiKey
from graytune.server.access.rate_limit import RateLimiter
from graytune.server.access.usage import Attempt, Budgets
from graytune.server.compute.errors import StoreUnavailable

log = logging.getLogger("graytune.server")


class UsageStore:
    def __init__(self, budgets: Budgets, timeout: float = 2.0, threads: int = 4):
        self.budgets, self.timeout = budgets, timeout
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="usage")
        # Describe's reads have threads of their own: a flood of Describe calls cannot delay a charge.
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="usage-read")
        self.answering = True  # whether the last operation got its answer in time
        self.on_change: Callable[[bool], None] | None = None  # told when that changes (in the event loop)

    async def take_call(self, key: ApiKey) -> None:
        await self._run("take a call from the rate bucket", self.budgets.take_call, key)

    async def refuse_if_spent(self, key: ApiKey, kind: str, call_id: str) -> None:
        await self._run("check the budget", self.budgets.refuse_if_spent, key, kind, call_id)

    async def charge(self, key: ApiKey, samples: int, call_id: str, digest: str, kind: str) -> Attempt | None:
        return await self._run("charge", self.budgets.charge, key, samples, call_id, digest, kind, on_late=self._let_go)

    async def remaining(self, key: ApiKey, kind: str) -> int | None:
        """The budget left, or None when the store does not answer in time (Describe says less)."""
        try:
            return await self._run("read usage", self.budgets.remaining, key, kind, pool=self._readers)
        except StoreUnavailable:
            return None

    async def release_abandoned(self, seconds: float, every: float = 60.0) -> None:
        """Until cancelled: every `every` seconds, gives back the charges no attempt has settled
        or refunded for `seconds` (a server died holding them)."""
        while True:
            await asyncio.sleep(every)
            try:
                released = await self._run("release abandoned charges", self.budgets.release_abandoned, seconds)
            except StoreUnavailable:
                continue
            if released:
                log.warning(
                    "usage store: gave back %d charges abandoned for over %g s (a server died holding them)",
                    released,
                    seconds,
                )

    def settle(self, attempt: Attempt) -> None:
        """Marks the charge served, in the background: nothing waits on it."""
        self._background("settle", self.budgets.settle, attempt)

    async def refund(self, attempt: Attempt) -> None:
        try:
            await self._run("refund", self.budgets.refund, attempt)
        except StoreUnavailable:  # the store is slow: the refund still happens when it answers
            pass

    def refund_later(self, attempt: Attempt) -> None:
        """A refund from a call that can no longer wait (its caller left)."""
        self._background("refund", self.budgets.refund, attempt)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self.budgets.db.close()

    async def _run(
        self, what: str, fn: Callable, *args, on_late: Callable | None = None, pool: ThreadPoolExecutor | None = None
    ):
        future = (pool or self._pool).submit(fn, *args)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            if on_late is not None:
                future.add_done_callback(on_late)
            self._answering(False, f"no answer within {self.timeout:g} s")
            raise StoreUnavailable(
                f"usage store: no answer within {self.timeout:g} s to {what} (--usage-timeout); retry the call"
            ) from None
        except self.budgets.db.unavailable as e:  # SQLite's "database is locked", PostgreSQL down
            self._answering(False, str(e))
            raise StoreUnavailable(f"usage store: {e} (while trying to {what}); retry the call") from None
        self._answering(True)
        return result

    def _answering(self, answering: bool, why: str = "") -> None:
        """Logs when the store stops or starts answering again, and tells `on_change`."""
        if answering == self.answering:
            return
        self.answering = answering
        if answering:
            log.info("usage store %s: answering again; billed calls are served", self.budgets.db.location)
        else:
            log.warning(
                "usage store %s: not answering (%s); billed calls are UNAVAILABLE", self.budgets.db.location, why
            )
        if self.on_change is not None:
            self.on_change(answering)

    def _let_go(self, future) -> None:
        """A charge made after its call stopped waiting for it: refunded at once."""
        if not future.cancelled() and future.exception() is None and future.result() is not None:
            self._background("refund a late charge", self.budgets.refund, future.result())

    def _background(self, what: str, fn: Callable, *args) -> None:
        def logged(future):
            if not future.cancelled() and future.exception() is not None:
                log.error("usage store: could not %s: %s", what, future.exception())

        self._pool.submit(fn, *args).add_done_callback(logged)


class SharedRateLimiter:
    """The rate buckets of a store every replica shares: each call takes from the store's bucket.

    This process's own bucket is asked first: a key flooding one replica is refused there, and
    never holds the store threads that every key's charges need."""

    scope = "shared"

    def __init__(self, store: UsageStore):
        self.store, self.local = store, RateLimiter()

    async def acquire(self, key: ApiKey) -> None:
        if key.rate_per_second is not None:
            await self.local.acquire(key)
            await self.store.take_call(key)


def rate_limiter_for(store: UsageStore | None) -> RateLimiter | SharedRateLimiter:
    """Rate buckets where the store keeps them: in it when replicas share it, else in this process."""
    if store is not None and store.budgets.db.rate_scope == SharedRateLimiter.scope:
        return SharedRateLimiter(store)
    return RateLimiter()
