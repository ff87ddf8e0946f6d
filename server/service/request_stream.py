"""Reading a request stream: a header, then tensor chunks, at a pace the server can afford.

An aio stream holds no thread, but it holds a slot of its key and its partial tensors: a
stream that stalls (a caller sending a few bytes every few seconds) is cut once it falls
behind the minimum upload rate, and its slot freed. The request's digest (the bytes of every
message, as they arrive) is what binds a call id to one request (see access/usage.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import torch
from google.protobuf.message import DecodeError

from graytune import tensor_codec
from graytune.server.compute.errors import InputError, UploadStalled
from graytune.tensor_codec import TensorAssembler


@dataclass(frozen=True)
class UploadPace:
    """A request must arrive at `min_bytes_per_second` on average once `grace_seconds` have
    passed: its n-th byte is due `grace + n / rate` seconds after the call began."""

    min_bytes_per_second: float = 64 * 1024
    grace_seconds: float = 10.0

    def due(self, start: float, received: int) -> float:
        return start + self.grace_seconds + received / self.min_bytes_per_second


def parse(message_type, data: bytes, what: str):
    try:
        return message_type.FromString(data)
    except DecodeError as e:
        raise InputError(f"{what}: not a valid {message_type.DESCRIPTOR.name} ({e})") from None


class RequestDigest:
    """sha256 of a request's messages, each after its length (message boundaries are part of
    the request). A large message is hashed on `executor` while the next one arrives: hashlib
    lets go of the GIL for it, and the event loop is not held for ~1 ms per MiB."""

    INLINE_BYTES = 64 * 1024  # below this a thread hop costs more than the hash

    def __init__(self, method: str, executor: Executor):
        self._hash = hashlib.sha256(method.encode())
        self._executor = executor
        self._pending: asyncio.Future | None = None  # the update in flight: updates run in order

    async def add(self, data: bytes) -> None:
        await self._settle()
        if len(data) < self.INLINE_BYTES:
            self._update(data)
        else:
            self._pending = asyncio.get_running_loop().run_in_executor(self._executor, self._update, data)

    def _update(self, data: bytes) -> None:
        self._hash.update(len(data).to_bytes(8, "little"))
        self._hash.update(data)

    async def hexdigest(self) -> str:
        await self._settle()
        return self._hash.hexdigest()

    async def _settle(self) -> None:
        """Waits for the update in flight, if any."""
        if self._pending is not None:
            await self._pending
            self._pending = None


async def read_stream(
    messages: AsyncIterator[bytes],
    message_type,
    max_tensor_bytes: int,
    pace: UploadPace,
    start: float,
    digest: RequestDigest | None = None,
    on_header: Callable[[object], None] = lambda header: None,
) -> tuple[object, dict[str, torch.Tensor]]:
    """Serialized messages: a header, then tensor chunks -> (header, {name: tensor}).
    `start`: time.monotonic when the call began; `digest` is updated with every message."""
    header, assembler, received, index = None, TensorAssembler(max_tensor_bytes), 0, 0
    stream = messages.__aiter__()
    while True:
        data = await _next(stream, pace.due(start, received + 1), received, start, pace)
        if data is None:
            break
        received += len(data)
        if digest is not None:
            await digest.add(data)
        chunk = tensor_codec.read_chunk(data)  # the usual message, its bytes not copied
        if chunk is None:
            message = parse(message_type, data, f"message {index}")
        index += 1
        kind = "chunk" if chunk else message.WhichOneof("kind")
        if kind == "header":
            if header is not None:
                raise InputError("header: sent twice")
            header = message.header
            on_header(header)
        elif kind == "chunk":
            if header is None:
                raise InputError("header: must be the first message of the stream")
            assembler.add(chunk or message.chunk)
        else:
            raise InputError("message: neither header nor chunk")
    if header is None:
        raise InputError("header: missing")
    return header, assembler.finish()


async def _next(stream, due: float, received: int, start: float, pace: UploadPace) -> bytes | None:
    """The next message, None at the end of the stream; UploadStalled when it is overdue
    (`due`: time.monotonic, the event loop's clock)."""
    try:
        async with asyncio.timeout_at(due):  # a timer, not a task, per message
            return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise UploadStalled(
            f"request stream: {received} bytes in {time.monotonic() - start:.1f} s, below the server's "
            f"minimum upload rate of {pace.min_bytes_per_second / 1024:g} KiB/s after the first "
            f"{pace.grace_seconds:g} s (--min-upload-kib-per-second); cut"
        ) from None
