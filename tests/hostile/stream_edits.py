"""Edits of a request's encoded stream: messages repeated, moved, dropped, emptied, extended,
turned into bytes that do not parse or into strings that are not UTF-8.

An edit is a Mutation (see mutations) that appends a function of the message list to
`Case.edits`, applied when the runner encodes the case, after the real handle is in. A case gets
one edit at most, after its other mutations, so the stream's layout it sees is final.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from graytune.v1 import oracle_pb2 as pb

from hostile.mutations import Mutation
from hostile.requests import RPCS, STREAMS
from hostile.wire import Case, chunks, mutated, varint, with_raw_string


def layout(case: Case) -> tuple[int, list[int]]:
    """(messages in the stream, indices of the messages that start a tensor)."""
    firsts, n = [], 1
    for t in case.tensors:
        firsts.append(n)
        n += len(chunks(t, case.chunk_bytes))
    return n, firsts


def stream_edit(rpcs=STREAMS, applies=lambda n, firsts: True):
    """Decorates fn(draw, case, n, firsts) -> Case, given the stream's `layout`."""
    return lambda fn: Mutation(
        fn.__name__,
        rpcs,
        lambda spec, case: "stream" not in case.touched and bool(applies(*layout(case))),
        lambda draw, spec, case: fn(draw, case, *layout(case)),
    )


def edited(case: Case, kind: str, detail: str, edit, **kw) -> Case:
    return mutated(case, kind, detail, touches=("stream",), edits=case.edits + (edit,), **kw)


def wrapper(case: Case):
    return pb.BackwardMessage if case.rpc == "Backward" else pb.InputMessage


@stream_edit()
def header_twice(draw, case, n, firsts):
    i = draw(st.integers(1, n))
    return edited(case, "header_twice", f"again at {i}", lambda items: items[:i] + [items[0]] + items[i:])


@stream_edit()
def header_misplaced(draw, case, n, firsts):
    """The header after chunks, or none at all."""
    i = draw(st.integers(1, n))
    if i == n:
        return edited(case, "header_misplaced", "dropped", lambda items: items[1:])
    return edited(
        case, "header_misplaced", f"moved to {i}", lambda items: items[1 : i + 1] + items[:1] + items[i + 1 :]
    )


@stream_edit(applies=lambda n, firsts: n >= 3)
def reorder(draw, case, n, firsts):
    """Two chunks swapped: whole tensors in another order are valid; parts of one may come
    out scrambled (into NaN, or ids out of range) or before its first chunk."""
    i, j = sorted(draw(st.lists(st.integers(1, n - 1), min_size=2, max_size=2, unique=True)))

    def swap(items):
        items = list(items)
        items[i], items[j] = items[j], items[i]
        return items

    return edited(case, "reorder", f"chunks {i} and {j} swapped", swap, may_pass=True)


def continuations(n: int, firsts: list[int]) -> list[int]:
    """Indices of chunks that continue a tensor."""
    return [i for i in range(2, n) if i not in firsts]


@stream_edit(applies=lambda n, firsts: continuations(n, firsts))
def truncate(draw, case, n, firsts):
    """The stream ends inside a tensor, at a chunk boundary."""
    i = draw(st.sampled_from(continuations(n, firsts)))
    return edited(case, "truncate", f"after {i} of {n} messages", lambda items: items[:i])


@stream_edit()
def empty_message(draw, case, n, firsts):
    i, empty = draw(st.integers(0, n)), wrapper(case)()
    return edited(case, "empty_message", f"at {i}", lambda items: items[:i] + [empty] + items[i:])


def replaced(i: int, make) -> Callable[[list], list]:
    """An edit: message i becomes make(message)."""
    return lambda items: items[:i] + [make(items[i])] + items[i + 1 :]


wire_types = st.sampled_from([(0, varint(300)), (1, bytes(8)), (2, varint(3) + b"abc"), (5, bytes(4))])


@stream_edit(RPCS)
def unknown_field(draw, case, n, firsts):
    """A field this protocol version does not know: a newer client's, to be ignored."""
    i, number = draw(st.integers(0, n - 1)), draw(st.integers(3, 18999))
    wire_type, payload = draw(wire_types)
    field = varint(number << 3 | wire_type) + payload
    return edited(
        case,
        "unknown_field",
        f"field {number} in message {i}",
        replaced(i, lambda item: item.SerializeToString() + field),
        codes=(),
        may_pass=True,
    )


@stream_edit(RPCS)
def not_a_message(draw, case, n, firsts):
    """Bytes no protobuf parser takes: a varint that stops short or runs past 10 bytes, a
    message cut inside. (A tag of field 0 is no such thing: an empty message type, like
    DescribeRequest, parses some of them.)"""
    forms = ["ff", "long varint"] + (["cut"] if case.rpc != "Describe" else [])  # DescribeRequest: b""
    i, form = draw(st.integers(0, n - 1)), draw(st.sampled_from(forms))
    if form == "cut":
        make = cut(draw(st.floats(0.01, 0.99)))
    else:
        junk = b"\xff\xff\xff" if form == "ff" else b"\xff" * 11 + draw(st.binary(max_size=16))
        make = lambda item: junk
    return edited(case, "not_a_message", f"message {i}: {form}", replaced(i, make))


def cut(fraction: float):
    """A message's bytes cut inside: a length prefix then promises more than follows."""

    def make(item) -> bytes:
        b = item.SerializeToString()
        return b[: min(len(b) - 1, max(1, int(len(b) * fraction)))]

    return make


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"caf\xe9", b"a\x80b"]


@stream_edit()
def invalid_utf8(draw, case, n, firsts):
    """A string field that is not UTF-8: a caption, a grad_inputs name, a tensor name, the handle."""
    header_fields = ["handle"] if case.rpc == "Backward" else ["texts", "grad_inputs"]
    targets = [(0, "header", field) for field in header_fields]
    targets += [(i, "chunk", "name") for i in firsts]
    i, sub, field = draw(st.sampled_from(targets))
    raw = draw(st.sampled_from(INVALID_UTF8))
    return edited(
        case,
        "invalid_utf8",
        f"{sub}.{field} of message {i} = {raw!r}",
        replaced(i, lambda item: with_raw_string(item, sub, field, raw)),
    )


@stream_edit()
def foreign_header(draw, case, n, firsts):
    """The header of another RPC's stream."""
    other = (
        pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE, texts=["a"]))
        if case.rpc == "Backward"
        else pb.BackwardMessage(header=pb.BackwardHeader(handle="00000000.1.0123456789abcdef"))
    )
    return edited(case, "foreign_header", type(other).__name__, replaced(0, lambda item: other.SerializeToString()))


STREAM = [
    header_twice,
    header_misplaced,
    reorder,
    truncate,
    empty_message,
    unknown_field,
    not_a_message,
    invalid_utf8,
    foreign_header,
]
