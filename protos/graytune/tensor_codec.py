"""Tensors on the wire: dtype + shape + raw little-endian bytes, split into chunks.

The one piece of code both sides share besides the generated stubs. Encoding copies each
tensor's bytes once: `tensor_to_messages` writes the stream messages itself, byte for byte what
protobuf writes, since protobuf copies a payload three times on the way (into the chunk, into
its parent message, into the serialized string). Decoding reads a chunk from its message's bytes
(`read_chunk`; protobuf parses anything else) and copies each chunk on arrival into the tensor's
buffer, which grows with what has arrived: a tensor never exists as one big `bytes` object, and
nothing is allocated for a declared size before its bytes have arrived (a hostile peer that
declares 256 MB and sends 4 bytes costs 4 bytes; the buffer holds at most 4× what arrived).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple, cast

import numpy as np
import torch

from graytune.v1 import oracle_pb2 as pb

if sys.byteorder != "little":  # the wire is little-endian and tensors are copied as raw bytes
    raise ImportError("graytune's tensor codec supports little-endian hosts only")

TORCH_DTYPES = {
    pb.FLOAT32: torch.float32,
    pb.FLOAT16: torch.float16,
    pb.BFLOAT16: torch.bfloat16,
    pb.UINT8: torch.uint8,
    pb.INT64: torch.int64,
}
WIRE_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}
FLOAT_WIRE_DTYPES = (pb.FLOAT32, pb.FLOAT16, pb.BFLOAT16)
DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB: streams of 1–4 MB chunks measured fastest here
MAX_NAME_CHARS = 64  # tensor names are short identifiers; longer ones are refused unread
MAX_DIMS = 8


def shown(text: str, limit: int = 40) -> str:
    """A caller-supplied string as it may appear in a message or a log: quoted, capped."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


class TensorFormatError(ValueError):
    """A tensor on the wire is malformed; the message names the tensor and what is wrong."""


def dtype_name(wire_dtype: int) -> str:
    return pb.DataType.Name(wire_dtype) if wire_dtype in pb.DataType.values() else str(wire_dtype)


def wire_dtype_of(dtype: torch.dtype, name: str = "tensor") -> pb.DataType:
    try:
        return WIRE_DTYPES[dtype]
    except KeyError:
        raise TensorFormatError(f"{name}: dtype {dtype} cannot travel on the wire") from None


def _slices(
    name: str, tensor: torch.Tensor, chunk_bytes: int, dtype: torch.dtype | None
) -> tuple[torch.Tensor, pb.DataType, Iterator[np.ndarray]]:
    """-> (the tensor as sent, its wire dtype, its raw bytes in consecutive views of chunk_bytes)."""
    t = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous()
    wire_dtype = wire_dtype_of(t.dtype, f"tensor '{name}'")
    raw = t.view(-1).view(torch.uint8).numpy()  # (nbytes,) a view, no copy
    return t, wire_dtype, (raw[start : start + chunk_bytes] for start in range(0, max(raw.size, 1), chunk_bytes))


def tensor_to_chunks(
    name: str, tensor: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES, dtype: torch.dtype | None = None
) -> Iterator[pb.TensorChunk]:
    """Yields `tensor` (cast to `dtype` if given) as consecutive chunks of `chunk_bytes`."""
    t, wire_dtype, slices = _slices(name, tensor, chunk_bytes, dtype)
    yield pb.TensorChunk(name=name, dtype=wire_dtype, shape=t.shape, data=next(slices).tobytes())
    for data in slices:
        yield pb.TensorChunk(name=name, data=data.tobytes())


def tensors_to_chunks(
    tensors: dict[str, torch.Tensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES, dtype: torch.dtype | None = None
) -> Iterator[pb.TensorChunk]:
    for name, tensor in tensors.items():
        yield from tensor_to_chunks(name, tensor, chunk_bytes, dtype)


# -- the chunks as serialized stream messages ------------------------------------------------
CHUNK_FIELD = 2  # InputMessage, OutputMessage, BackwardMessage: oneof kind { header = 1; chunk = 2; }
VARINT, LENGTH_DELIMITED = 0, 2  # protobuf wire types


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _delimited(field: int, length: int) -> bytes:
    return _key(field, LENGTH_DELIMITED) + _varint(length)


def tensor_to_messages(
    name: str, tensor: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES, dtype: torch.dtype | None = None
) -> Iterator[bytes]:
    """`tensor_to_chunks`'s chunks, each serialized as the stream message that carries it:
    byte for byte `Message(chunk=chunk).SerializeToString()` (fields in order, proto3 defaults
    left out, the shape packed), with the tensor's bytes copied once."""
    t, wire_dtype, slices = _slices(name, tensor, chunk_bytes, dtype)
    encoded = name.encode()
    named = _delimited(1, len(encoded)) + encoded if encoded else b""
    shape = b"".join(map(_varint, t.shape))
    first = named + _key(2, VARINT) + _varint(wire_dtype) + (_delimited(3, len(shape)) + shape if shape else b"")
    for i, data in enumerate(slices):
        head = (named if i else first) + (_delimited(4, data.size) if data.size else b"")  # the chunk up to its bytes
        yield b"".join((_delimited(CHUNK_FIELD, len(head) + data.size), head, data.data))


class RawChunk(NamedTuple):
    """A TensorChunk read from a message's bytes, its data a view of them (see `read_chunk`)."""

    name: str
    dtype: pb.DataType
    shape: tuple[int, ...]
    data: memoryview


Chunk = pb.TensorChunk | RawChunk  # what TensorAssembler reads: parsed by protobuf, or by read_chunk


def _read_varint(data: memoryview, at: int) -> tuple[int, int]:
    """-> (value, position after it); value -1 for a varint that is cut off or over 64 bits."""
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at
    return -1, at


_CHUNK_TAG = _key(CHUNK_FIELD, LENGTH_DELIMITED)[0]  # one byte: the message's first
_CHUNK_FIELDS = {(1, LENGTH_DELIMITED), (2, VARINT), (3, LENGTH_DELIMITED), (4, LENGTH_DELIMITED)}


def read_chunk(message: bytes) -> RawChunk | None:
    """The chunk of a serialized stream message laid out as protobuf writes it (`tensor_to_messages`:
    field 2 holding name, dtype, packed shape, data, each at most once and in that order), with
    its data a view of `message` rather than two copies (protobuf's parse, then `.data`). None
    for any other message (a header, other layouts, anything malformed): parse those with
    protobuf, which then says what is wrong. What this accepts, protobuf reads the same."""
    data = memoryview(message)
    if not data or data[0] != _CHUNK_TAG:
        return None
    length, at = _read_varint(data, 1)
    if length < 0 or at + length != len(data):
        return None
    fields: dict[int, int | memoryview] = {}
    while at < len(data):
        key, at = _read_varint(data, at)
        field, wire_type = key >> 3, key & 7
        if key < 0 or field in fields or any(f > field for f in fields) or (field, wire_type) not in _CHUNK_FIELDS:
            return None
        value, at = _read_varint(data, at)
        if value < 0:
            return None
        if wire_type == LENGTH_DELIMITED:
            if at + value > len(data):
                return None
            fields[field], at = data[at : at + value], at + value
        else:
            fields[field] = value
    # _CHUNK_FIELDS fixed the wire types: field 2 a varint, the others spans of `message`.
    spans = cast(dict[int, memoryview], fields)
    try:
        name = bytes(spans.get(1, b"")).decode()  # protobuf refuses a string that is not UTF-8 too
    except UnicodeDecodeError:
        return None
    shape, packed, at = [], spans.get(3, memoryview(b"")), 0
    while at < len(packed):
        dim, at = _read_varint(packed, at)
        if not 0 <= dim < 1 << 63:  # cut off, or a negative int64
            return None
        shape.append(dim)
    dtype = cast(pb.DataType, fields.get(2, 0))  # an open enum: any int32, as protobuf's parse reads it
    if dtype >= 1 << 31:  # an enum is an int32
        return None
    return RawChunk(name, dtype, tuple(shape), spans.get(4, memoryview(b"")))


def chunk_of(
    message: bytes, message_type: type[pb.InputMessage | pb.OutputMessage | pb.BackwardMessage] = pb.OutputMessage
) -> Chunk:
    """The chunk a serialized stream message carries: read from its bytes (`read_chunk`), or
    else parsed by protobuf (an empty chunk if the message holds none)."""
    return read_chunk(message) or message_type.FromString(message).chunk


class TensorAssembler:
    """Reassembles tensors from chunks, checking each header against `max_tensor_bytes` up
    front and every chunk against the declared size as it arrives."""

    def __init__(self, max_tensor_bytes: int = 1 << 62):
        self.max_tensor_bytes = max_tensor_bytes
        self.tensors: dict[str, torch.Tensor] = {}
        self._open: Chunk | None = None  # first chunk of the tensor still receiving bytes
        self._buffer = np.empty(0, dtype=np.uint8)  # (capacity,) its bytes so far, then room
        self._nbytes = self._filled = 0  # declared and received bytes of the open tensor

    def add(self, chunk: Chunk) -> None:
        if self._open is not None and chunk.name == self._open.name and not chunk.shape:
            self._append(chunk.data)
            return
        if self._open is not None:
            raise TensorFormatError(
                f"tensor {shown(self._open.name)}: got {self._filled} of {self._nbytes} bytes "
                f"before a chunk of {shown(chunk.name)}"
            )
        self._start(chunk)

    def _start(self, chunk: Chunk) -> None:
        name = chunk.name
        if not name:
            raise TensorFormatError("tensor chunk without a name")
        if len(name) > MAX_NAME_CHARS:
            raise TensorFormatError(f"tensor {shown(name)}: name longer than {MAX_NAME_CHARS} characters")
        if name in self.tensors:
            raise TensorFormatError(f"tensor {shown(name)}: sent twice")
        if chunk.dtype not in TORCH_DTYPES:
            raise TensorFormatError(
                f"tensor {shown(name)}: dtype {chunk.dtype} unsupported; expected one of "
                f"{[dtype_name(d) for d in TORCH_DTYPES]}"
            )
        self._nbytes = declared_bytes(name, tuple(chunk.shape), TORCH_DTYPES[chunk.dtype], self.max_tensor_bytes)
        self._open, self._filled = chunk, 0  # _buffer is empty: __init__ and _close leave it so
        self._append(chunk.data)

    def _append(self, data: bytes | memoryview) -> None:
        end = self._filled + len(data)
        if end > self._nbytes:
            assert self._open is not None  # _start set it before its first _append
            raise TensorFormatError(
                f"tensor {shown(self._open.name)}: more bytes than its shape and dtype hold ({end} > {self._nbytes})"
            )
        if end > self._buffer.size:
            # Grown 4× at a time, capped at the declared size: a 64 MB tensor in 1 MiB chunks
            # is copied 1.3× in all. Copying each chunk as it arrives (still in cache, its
            # message then freed) made 16 and 64 MB round trips faster than holding the chunks
            # to copy them at the end (benchmarks/transport.py). numpy's allocation, not
            # torch.empty: filling a fresh 16 MB torch.empty took 13 ms here (its pages are new
            # each time) against 1 ms for np.empty's reused pages.
            grown = np.empty(min(self._nbytes, max(4 * self._buffer.size, end)), dtype=np.uint8)
            grown[: self._filled] = self._buffer[: self._filled]
            self._buffer = grown
        self._buffer[self._filled : end] = np.frombuffer(data, dtype=np.uint8)
        self._filled = end
        if end == self._nbytes:
            self._close()

    def _close(self) -> None:
        """All bytes are here: the buffer, exactly the declared size, becomes the tensor."""
        first = self._open
        assert first is not None  # _append closes the tensor _start opened
        dtype = TORCH_DTYPES[first.dtype]
        flat = torch.from_numpy(self._buffer).view(dtype) if self._nbytes else torch.empty(0, dtype=dtype)
        self.tensors[first.name] = flat.view(tuple(first.shape))
        self._open, self._buffer = None, np.empty(0, dtype=np.uint8)

    def finish(self) -> dict[str, torch.Tensor]:
        """The complete tensors; raises if one is still missing bytes."""
        if self._open is not None:
            raise TensorFormatError(
                f"tensor {shown(self._open.name)}: stream ended after {self._filled} of {self._nbytes} bytes"
            )
        return self.tensors


def declared_bytes(name: str, shape: tuple[int, ...], dtype: torch.dtype, max_bytes: int) -> int:
    """Bytes of a declared tensor, refusing shapes no tensor of `max_bytes` can have. Python's
    integers do not overflow; the product of the non-zero dimensions is checked too, since
    [0, 2^62, 2^62] holds 0 bytes but no allocator can lay out its strides."""
    if len(shape) > MAX_DIMS:
        raise TensorFormatError(f"tensor {shown(name)}: {len(shape)} dimensions; the limit is {MAX_DIMS}")
    if any(d < 0 for d in shape):
        raise TensorFormatError(f"tensor {shown(name)}: negative dimension in shape {list(shape)}")
    extent = math.prod(max(d, 1) for d in shape) * dtype.itemsize
    if extent > max_bytes:
        zeros = " (zero dimensions counted as 1)" if 0 in shape else ""
        raise TensorFormatError(
            f"tensor {shown(name)}: shape {list(shape)}: {extent} bytes{zeros} exceeds the limit "
            f"of {max_bytes} bytes per tensor"
        )
    return math.prod(shape) * dtype.itemsize


def chunks_to_tensors(chunks: Iterable[Chunk], max_tensor_bytes: int = 1 << 62) -> dict[str, torch.Tensor]:
    assembler = TensorAssembler(max_tensor_bytes)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()
