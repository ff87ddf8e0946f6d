"""Tensors on the wire: dtype + shape + raw little-endian bytes, split into chunks.

The one piece of code both sides share besides the generated stubs. Encoding copies each
tensor's bytes once (into the chunk messages); decoding copies each chunk once, straight into a
preallocated tensor, so a tensor of any size never exists as one big `bytes` object.
"""
from __future__ import annotations

import math
import sys
from typing import Dict, Iterable, Iterator, Optional

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
    """Reassembles tensors from chunks, checking each against `max_tensor_bytes` up front."""

    def __init__(self, max_tensor_bytes: int = 1 << 62):
        self.max_tensor_bytes = max_tensor_bytes
        self.tensors: Dict[str, torch.Tensor] = {}
        self._open: Optional[str] = None  # name of the tensor still receiving bytes
        self._raw: Optional[np.ndarray] = None  # (nbytes,) uint8 view of the open tensor
        self._filled = 0

    def add(self, chunk: pb.TensorChunk) -> None:
        if self._open is not None and chunk.name == self._open and not chunk.shape:
            self._append(chunk.data)
            return
        if self._open is not None:
            raise TensorFormatError(
                f"tensor '{self._open}': got {self._filled} of {self._raw.size} bytes before "
                f"chunk of '{chunk.name}'")
        self._start(chunk)

    def _start(self, chunk: pb.TensorChunk) -> None:
        name = chunk.name
        if not name:
            raise TensorFormatError("tensor chunk without a name")
        if name in self.tensors:
            raise TensorFormatError(f"tensor '{name}': sent twice")
        if chunk.dtype not in TORCH_DTYPES:
            raise TensorFormatError(
                f"tensor '{name}': dtype {chunk.dtype} unsupported; expected one of "
                f"{[dtype_name(d) for d in TORCH_DTYPES]}")
        shape = tuple(chunk.shape)
        if any(d < 0 for d in shape):
            raise TensorFormatError(f"tensor '{name}': negative dimension in shape {list(shape)}")
        dtype = TORCH_DTYPES[chunk.dtype]
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.max_tensor_bytes:
            raise TensorFormatError(
                f"tensor '{name}': {nbytes} bytes exceeds the limit of {self.max_tensor_bytes} "
                f"bytes per tensor")
        tensor = torch.empty(shape, dtype=dtype)
        self.tensors[name] = tensor
        self._open, self._raw, self._filled = name, tensor.view(-1).view(torch.uint8).numpy(), 0
        self._append(chunk.data)

    def _append(self, data: bytes) -> None:
        end = self._filled + len(data)
        if end > self._raw.size:
            raise TensorFormatError(
                f"tensor '{self._open}': more bytes than its shape and dtype hold "
                f"({end} > {self._raw.size})")
        self._raw[self._filled:end] = np.frombuffer(data, dtype=np.uint8)
        self._filled = end
        if end == self._raw.size:
            self._open, self._raw = None, None

    def finish(self) -> Dict[str, torch.Tensor]:
        """The complete tensors; raises if one is still missing bytes."""
        if self._open is not None:
            raise TensorFormatError(
                f"tensor '{self._open}': stream ended after {self._filled} of "
                f"{self._raw.size} bytes")
        return self.tensors


def chunks_to_tensors(chunks: Iterable[pb.TensorChunk],
                      max_tensor_bytes: int = 1 << 62) -> Dict[str, torch.Tensor]:
    assembler = TensorAssembler(max_tensor_bytes)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()
