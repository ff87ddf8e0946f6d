"""A request as it travels: tensors whose declared shape and bytes may disagree, a header, and
edits applied to the encoded stream. Encoding goes down to raw bytes, so a case can send what
no protobuf library would produce (invalid UTF-8, bytes that are not a message).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
import torch

from graytune.tensor_codec import TORCH_DTYPES
from graytune.v1 import oracle_pb2 as pb

FLOATS = (pb.FLOAT32, pb.FLOAT16, pb.BFLOAT16)
HANDLE = "<handle>"  # in a Backward header: the handle of the case's Forward, known at run time
NEVER_ISSUED = {  # how a case turns its Forward's handle ("instance.seq.token") into one never issued
    "never issued: other token": lambda instance, seq, token: f"{instance}.{seq}.{int(token, 16) ^ 1:016x}",
    "never issued: seq beyond": lambda instance, seq, token: f"{instance}.{10**17}.{token}",
    "never issued: seq 0": lambda instance, seq, token: f"{instance}.0.{token}",
}
MAX_CHUNKS = 64  # per tensor: small chunks exercise reassembly, thousands of them only slow a run

Item = bytes | pb.InputMessage | pb.BackwardMessage | pb.DescribeRequest  # one stream message
Edit = Callable[[list[Item]], list[Item]]


@dataclass(frozen=True)
class Tensor:
    """A tensor as sent, with the contract's shape for it: `expected` has None where the size
    is free, `limits` the smallest refused size of each free dimension (None: no limit)."""

    name: str
    dtype: int  # a wire DataType, or any int32
    shape: tuple[int, ...]
    data: bytes
    expected: tuple[int | None, ...] = ()
    limits: tuple[int | None, ...] = ()

    def to_torch(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.data), dtype=TORCH_DTYPES[self.dtype]).reshape(self.shape)

    def replace(self, **changes) -> Tensor:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, repr=False)
class Case:
    """A request of one RPC, the mutations it went through and the statuses they allow."""

    rpc: str  # Describe, Embed, Forward or Backward
    header: object  # InputHeader, BackwardHeader or DescribeRequest
    tensors: tuple[Tensor, ...] = ()
    chunk_bytes: int = 1 << 20
    key: str = "caller"  # a key name of the runner's server, or the literal secret sent
    metadata: tuple[tuple[str, str], ...] = ()
    forward: Case | None = None  # Backward: the Forward whose handle replaces HANDLE
    handle: str = "own"  # Backward: how that handle is used: own, consumed, or a key of NEVER_ISSUED
    edits: tuple[Edit, ...] = ()  # on the encoded stream, in order
    what: str = ""  # the valid request, then each mutation
    kinds: tuple[str, ...] = ()  # the mutations' names, to group failures by
    touched: frozenset[str] = frozenset()  # what mutations changed: each thing changes once
    codes: frozenset[grpc.StatusCode] = frozenset()  # statuses some mutation may cause
    may_pass: bool = True  # False once a mutation makes the request invalid

    def __repr__(self) -> str:
        return f"Case({self.what!r})"

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis prints a failing case
        printer.text(repr(self))

    def allowed(self) -> frozenset[grpc.StatusCode]:
        return self.codes | ({grpc.StatusCode.OK} if self.may_pass else frozenset())

    def tensor(self, name: str) -> Tensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def mutated(
    case: Case,
    kind: str,
    detail: str,
    codes=(grpc.StatusCode.INVALID_ARGUMENT,),
    may_pass: bool = False,
    touches: Iterable[str] = (),
    **changes,
) -> Case:
    """`case` after one mutation: its changes, the statuses it allows (`codes`, and OK if it
    `may_pass`), what it touched (default: `kind`)."""
    return dataclasses.replace(
        case,
        what=f"{case.what} | {kind}: {detail}",
        kinds=case.kinds + (kind,),
        touched=case.touched | set(touches or (kind,)),
        codes=case.codes | frozenset(codes),
        may_pass=case.may_pass and may_pass,
        **changes,
    )


def itemsize(dtype: int) -> int:
    return TORCH_DTYPES[dtype].itemsize if dtype in TORCH_DTYPES else 4


def values(dtype: int, shape: tuple[int, ...], seed: int = 0) -> bytes:
    """Bytes for `shape`: normal floats for float dtypes, zeros for the rest."""
    n = math.prod(shape)
    if dtype not in FLOATS:
        return bytes(n * itemsize(dtype))
    t = torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(TORCH_DTYPES[dtype])
    return raw_bytes(t)


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def chunks(t: Tensor, chunk_bytes: int) -> list[pb.TensorChunk]:
    """The first chunk declares dtype and shape; every chunk carries a slice of `t.data`."""
    size = max(chunk_bytes, -(-len(t.data) // MAX_CHUNKS))
    return [pb.TensorChunk(name=t.name, dtype=t.dtype, shape=t.shape, data=t.data[:size])] + [
        pb.TensorChunk(name=t.name, data=t.data[i : i + size]) for i in range(size, len(t.data), size)
    ]


def messages(case: Case, handle: str = HANDLE) -> list[Item]:
    """The stream of `case`, edits applied; `handle` replaces HANDLE in a Backward header."""
    if case.rpc == "Describe":
        items: list[Item] = [case.header]
    else:
        wrap = pb.BackwardMessage if case.rpc == "Backward" else pb.InputMessage
        header = type(case.header)()
        header.CopyFrom(case.header)
        if case.rpc == "Backward" and header.handle == HANDLE:
            header.handle = handle
        items = [wrap(header=header)] + [wrap(chunk=c) for t in case.tensors for c in chunks(t, case.chunk_bytes)]
    for edit in case.edits:
        items = edit(items)
    return items


def encode(items: list[Item]) -> list[bytes]:
    return [item if isinstance(item, bytes) else item.SerializeToString() for item in items]


# -- protobuf by hand --------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One field of wire type 2 (string, bytes, sub-message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def with_raw_string(message, sub: str, field: str, raw: bytes) -> bytes:
    """A stream message serialized by hand, with `raw` (any bytes, e.g. invalid UTF-8) as the
    value of string field `field` of its sub-message `sub` (one more value, if repeated)."""
    inner = type(getattr(message, sub))()
    inner.CopyFrom(getattr(message, sub))
    descriptor = inner.DESCRIPTOR.fields_by_name[field]
    if not descriptor.is_repeated:
        inner.ClearField(field)
    payload = inner.SerializeToString() + length_delimited(descriptor.number, raw)
    return length_delimited(message.DESCRIPTOR.fields_by_name[sub].number, payload)
