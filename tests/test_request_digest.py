"""The request digest that binds a call id to one request: every message's length and bytes, in
order, whether a message is hashed inline (small) or on a thread while the next one arrives."""

from __future__ import annotations

import asyncio
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from graytune.server.service.request_stream import RequestDigest

SMALL, LARGE = 100, 3 * RequestDigest.INLINE_BYTES


def digest_of(messages, method="Forward", threads=2) -> str:
    async def run():
        with ThreadPoolExecutor(threads) as executor:
            digest = RequestDigest(method, executor)
            for data in messages:
                await digest.add(data)
            return await digest.hexdigest()

    return asyncio.run(run())


def expected(messages, method="Forward") -> str:
    h = hashlib.sha256(method.encode())
    for data in messages:
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


@pytest.mark.parametrize("sizes", [[SMALL], [LARGE], [SMALL, LARGE, LARGE, SMALL, LARGE], [LARGE] * 8])
def test_the_digest_is_every_message_in_order_inline_or_on_a_thread(sizes):
    messages = [os.urandom(n) for n in sizes]
    assert digest_of(messages) == expected(messages)


def test_message_boundaries_method_and_order_are_part_of_the_request():
    a, b = os.urandom(LARGE), os.urandom(LARGE)
    base = digest_of([a, b])
    assert digest_of([a + b]) != base  # the same bytes in other messages
    assert digest_of([b, a]) != base
    assert digest_of([a, b], method="Embed") != base
