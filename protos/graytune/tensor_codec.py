"""Tensors on the wire: dtype + shape + raw little-endian bytes, split into chunks.

The one piece of code both sides share besides the generated stubs. Encoding copies each
tensor's bytes once (into the chunk messages); decoding keeps the chunks as they arrive and
copies each once into the finished tensor, so a tensor never exists as one big `bytes` object
and nothing is allocated for a declared size before its bytes have arrived (a hostile peer
that declares 256 MB and sends 4 bytes costs 4 bytes).
"""
from __future__ import annotations

import math
import sys
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

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


def wire_dtype_of(dtype: torch.dtype, name: str = "tensor") -> int:
    try:
        return WIRE_DTYPES[dtype]
    except KeyError:
        raise TensorFormatError(f"{name}: dtype {dtype} cannot travel on the wire") from None


def tensor_to_chunks(name: str, tensor: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                     dtype: Optional[torch.dtype] = None) -> Iterator[pb.TensorChunk]:
    """Yields `tensor` (cast to `dtype` if given) as consecutive chunks of `chunk_bytes`."""
    t = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous()
    wire_dtype = wire_dtype_of(t.dtype, f"tensor '{name}'")
    raw = t.view(-1).view(torch.uint8).numpy()  # (nbytes,) a view, no copy
    first = True
    for start in range(0, max(raw.size, 1), chunk_bytes):
        data = raw[start:start + chunk_bytes].tobytes()
        if first:
            yield pb.TensorChunk(name=name, dtype=wire_dtype, shape=t.shape, data=data)
            first = False
        else:
            yield pb.TensorChunk(name=name, data=data)


def tensors_to_chunks(tensors: Dict[str, torch.Tensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      dtype: Optional[torch.dtype] = None) -> Iterator[pb.TensorChunk]:
    for name, tensor in tensors.items():
        yield from tensor_to_chunks(name, tensor, chunk_bytes, dtype)


class TensorAssembler:
    """Reassembles tensors from chunks, checking each header against `max_tensor_bytes` up
    front and every chunk against the declared size as it arrives."""

    def __init__(self, max_tensor_bytes: int = 1 << 62):
        self.max_tensor_bytes = max_tensor_bytes
        self.tensors: Dict[str, torch.Tensor] = {}
        self._open: Optional[pb.TensorChunk] = None  # first chunk of the tensor still receiving bytes
        self._parts: List[bytes] = []  # its payloads so far
        self._nbytes = self._filled = 0  # declared and received bytes of the open tensor

    def add(self, chunk: pb.TensorChunk) -> None:
        if self._open is not None and chunk.name == self._open.name and not chunk.shape:
            self._append(chunk.data)
            return
        if self._open is not None:
            raise TensorFormatError(
                f"tensor {shown(self._open.name)}: got {self._filled} of {self._nbytes} bytes "
                f"before a chunk of {shown(chunk.name)}")
        self._start(chunk)

    def _start(self, chunk: pb.TensorChunk) -> None:
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
                f"{[dtype_name(d) for d in TORCH_DTYPES]}")
        self._nbytes = declared_bytes(name, tuple(chunk.shape), TORCH_DTYPES[chunk.dtype],
                                      self.max_tensor_bytes)
        self._open, self._parts, self._filled = chunk, [], 0
        self._append(chunk.data)

    def _append(self, data: bytes) -> None:
        end = self._filled + len(data)
        if end > self._nbytes:
            raise TensorFormatError(
                f"tensor {shown(self._open.name)}: more bytes than its shape and dtype hold "
                f"({end} > {self._nbytes})")
        self._parts.append(data)
        self._filled = end
        if end == self._nbytes:
            self._close()

    def _close(self) -> None:
        """All bytes are here: one tensor, each chunk copied into it once."""
        first = self._open
        # numpy's allocation, not torch.empty: filling a fresh 16 MB torch.empty took 13 ms here
        # (its pages are new each time) against 1 ms for np.empty, whose pages malloc reuses.
        raw = np.empty(self._nbytes, dtype=np.uint8)  # (nbytes,)
        at = 0
        for part in self._parts:
            raw[at:at + len(part)] = np.frombuffer(part, dtype=np.uint8)
            at += len(part)
        dtype = TORCH_DTYPES[first.dtype]
        flat = torch.from_numpy(raw).view(dtype) if raw.size else torch.empty(0, dtype=dtype)
        self.tensors[first.name] = flat.view(tuple(first.shape))
        self._open, self._parts = None, []

    def finish(self) -> Dict[str, torch.Tensor]:
        """The complete tensors; raises if one is still missing bytes."""
        if self._open is not None:
            raise TensorFormatError(
                f"tensor {shown(self._open.name)}: stream ended after {self._filled} of "
                f"{self._nbytes} bytes")
        return self.tensors


def declared_bytes(name: str, shape: Tuple[int, ...], dtype: torch.dtype, max_bytes: int) -> int:
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
            f"of {max_bytes} bytes per tensor")
    return math.prod(shape) * dtype.itemsize


def chunks_to_tensors(chunks: Iterable[pb.TensorChunk],
                      max_tensor_bytes: int = 1 << 62) -> Dict[str, torch.Tensor]:
    assembler = TensorAssembler(max_tensor_bytes)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()
