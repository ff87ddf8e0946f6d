"""Hostile input, property-based (issue 8): valid requests of every RPC with one or two
mutations (tests/hostile), against one real server with three keys.

Every case must get a precise status the case allows (never UNKNOWN or INTERNAL), a message
under 1,000 characters, must not hold up another caller's Embed past the harness's bound, and
must leave the server serving. One hypothesis run per RPC and first mutation, so each mutation
meets each RPC it applies to and a failure names its kind (see `each_case` for the seeding).
"""

from __future__ import annotations

import pytest

from helpers import SERVER_ARGS
from hostile.cases import PAIRS, each_case
from hostile.runner import OK, harness, report
from hostile.wire import NEVER_ISSUED

UNPLANNED, PER_MUTATION = 16, 5  # cases per RPC with any mutations, and per (RPC, first mutation)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    with harness(tmp_path_factory.mktemp("fuzz"), [a for a in SERVER_ARGS if a != "--dev"]) as h:
        yield h


@pytest.mark.parametrize("rpc,first", PAIRS, ids=[f"{rpc}-{m.name if m else 'any'}" for rpc, m in PAIRS])
def test_hostile_input(target, rpc, first):
    @each_case(target.spec, rpc, first, PER_MUTATION if first else UNPLANNED)
    def check(case):
        result = target.run(case)
        problems = target.violations(case, result)
        assert not problems, report(result, problems)

    check()


def test_another_callers_handle_answers_like_a_never_issued_one(target):
    """A handle of another key's live graph tells the caller no more than a guessed one: the
    same instance and sequence number, another secret part."""
    forward, handle = target.forward("other")
    assert forward.code == OK, forward
    guess = NEVER_ISSUED["never issued: other token"](*handle.split("."))
    stolen = target.backward(handle, (1, target.spec.embed_dim), "caller")
    guessed = target.backward(guess, (1, target.spec.embed_dim), "caller")
    assert (stolen.code, stolen.message.replace(handle, "<handle>")) == (
        guessed.code,
        guessed.message.replace(guess, "<handle>"),
    )
    assert target.backward(handle, (1, target.spec.embed_dim), "other").code == OK  # the owner's graph, untouched
