"""Hostile cases: a valid request of an RPC with up to two mutations, as a hypothesis strategy,
and the seeded runs the test and the benchmark make of it.
"""

from __future__ import annotations

import zlib

from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st

from hostile import requests
from hostile.mutations import SEMANTIC, Mutation
from hostile.requests import RPCS, Spec
from hostile.stream_edits import STREAM
from hostile.wire import Case

MUTATIONS = {m.name: m for m in SEMANTIC + STREAM}
# (rpc, first mutation): None for any mutations; each mutation with each RPC it applies to
PAIRS = [(rpc, None) for rpc in RPCS] + [(rpc, m) for m in MUTATIONS.values() for rpc in m.rpcs]


def applicable(spec: Spec, case: Case, group) -> list[Mutation]:
    return [m for m in group if case.rpc in m.rpcs and m.applies(spec, case)]


@st.composite
def cases(draw, spec: Spec, rpc: str, first: Mutation | None = None) -> Case:
    """A valid request of `rpc`, then up to two mutations (`first`, if given, among them); at
    most one edits the stream, last."""
    base = requests.valid(spec, rpc)
    case = draw(base if first is None else base.filter(lambda c: first.applies(spec, c)))
    if first is None:
        plan = draw(st.sampled_from([[SEMANTIC], [SEMANTIC, SEMANTIC], [STREAM], [SEMANTIC, STREAM], []]))
    else:  # `first` alone half the time: with another mutation, that one may be refused first
        plan = draw(
            st.sampled_from(
                [[[first]], [SEMANTIC, [first]]]
                if first in STREAM
                else [[[first]], [[first], SEMANTIC], [[first]], [[first], STREAM]]
            )
        )
    for group in plan:
        options = applicable(spec, case, group)
        if options:
            case = draw(st.sampled_from(options)).apply(draw, spec, case)
    assume(first is None or first.name in case.kinds)  # a first mutation may leave `first` no room
    return case


def each_case(spec: Spec, rpc: str, first: Mutation | None, examples: int, salt: int = 0):
    """Decorates fn(case) into a hypothesis run over `examples` cases of `rpc` and `first`,
    seeded by their names (and `salt`): the same cases every run, other ones for each pair.
    No shrinking: each step would be server calls, and a case says what it is."""
    name = f"{rpc}-{first.name if first else 'any'}"
    return lambda fn: seed(zlib.crc32(name.encode()) + salt)(
        settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(cases(spec, rpc, first))(fn))
    )
