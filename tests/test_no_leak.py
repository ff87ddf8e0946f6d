"""Weights, parameter gradients and activations never leave the server.

Every reply of every call (Describe, Embed, Forward, Backward) is recorded through the raw stub;
the tensors in it are exactly the ones the contract names, with exactly the bytes their shapes
require, and no window of any parameter's or buffer's raw bytes (float32, bfloat16, float16)
occurs anywhere in the serialized replies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
import pytest
import torch
from google.protobuf.descriptor import FieldDescriptor

from graytune import tensor_codec
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

WINDOW = 16  # bytes
STRIDE = 64  # bytes between the starts of two windows of one tensor
CAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CHUNK_OVERHEAD = 64  # bytes of a chunk message besides its data: name, dtype, shape, tags


@dataclass
class Call:
    method: str
    expected: dict[str, tuple[int, tuple[int, ...]]]  # name -> (wire dtype, shape), in any order
    replies: list[pb.OutputMessage] = field(default_factory=list)


def _send(stub, method: str, header, tensors: dict[str, torch.Tensor], message_type) -> list:
    messages = [message_type(header=header)]
    for name, t in tensors.items():
        messages += [message_type(chunk=c) for c in tensor_codec.tensor_to_chunks(name, t)]
    return list(getattr(stub, method)(iter(messages), timeout=60))


@pytest.fixture(scope="module", params=[pb.FLOAT32, pb.BFLOAT16, pb.FLOAT16], ids=["float32", "bfloat16", "float16"])
def session(request, server):
    """Runs one of each call with inputs and replies in one float dtype; records every reply."""
    wire = request.param
    dtype = tensor_codec.TORCH_DTYPES[wire]
    channel = grpc.insecure_channel(server.endpoint)
    stub = pb_grpc.GradientOracleStub(channel)
    g = torch.Generator().manual_seed(7)
    describe = stub.Describe(pb.DescribeRequest(), timeout=60)
    E, H, W = describe.embed_dim, describe.image.height, describe.image.width
    D, L, V = describe.text.token_width, describe.text.context_length, describe.text.vocab_size
    calls: list[Call] = []

    def inputs(method, tower, tensors, texts=(), grad_inputs=()):
        header = pb.InputHeader(tower=tower, texts=list(texts), output_dtype=wire, grad_inputs=list(grad_inputs))
        batch = len(texts) or next(iter(tensors.values())).shape[0]
        call = Call(method, {"embeddings": (wire, (batch, E))})
        call.replies = _send(stub, method, header, tensors, pb.InputMessage)
        calls.append(call)
        return call

    def backward(forward_call, inputs_sent):
        handle = forward_call.replies[0].header.handle
        batch = forward_call.expected["embeddings"][1][0]
        grad = torch.randn(batch, E, generator=g).to(dtype)
        call = Call("Backward", {n: (wire, tuple(t.shape)) for n, t in inputs_sent.items()})
        call.replies = _send(
            stub,
            "Backward",
            pb.BackwardHeader(handle=handle, output_dtype=wire),
            {"embeddings": grad},
            pb.BackwardMessage,
        )
        calls.append(call)

    pixels = torch.randn(3, 3, H, W, generator=g).to(dtype)
    shift = (0.1 * torch.randn(D, generator=g)).to(dtype)
    extra = (0.1 * torch.randn(4, D, generator=g)).to(dtype)
    ids = torch.ones(2, L, dtype=torch.int64)
    ids[:, 0], ids[0, 5], ids[1, 9] = V - 2, V - 1, V - 1
    texts = ["a photo of a cat", "a dog on the grass"]

    inputs("Embed", pb.IMAGE, {"pixels": pixels})
    inputs("Embed", pb.TEXT, {}, texts)
    inputs("Embed", pb.TEXT, {"token_ids": ids, "shift": shift, "extra_tokens": extra})
    f = inputs("Forward", pb.IMAGE, {"pixels": pixels})
    backward(f, {"pixels": pixels})
    f = inputs("Forward", pb.TEXT, {"shift": shift, "extra_tokens": extra}, texts)
    backward(f, {"shift": shift, "extra_tokens": extra})
    f = inputs("Forward", pb.TEXT, {"token_ids": ids, "shift": shift, "extra_tokens": extra})
    backward(f, {"shift": shift, "extra_tokens": extra})  # token_ids: discrete, no gradient
    f = inputs(
        "Forward", pb.TEXT, {"token_ids": ids, "shift": shift, "extra_tokens": extra}, grad_inputs=["extra_tokens"]
    )
    backward(f, {"extra_tokens": extra})
    channel.close()
    return describe, calls


def _tensors_of(call: Call) -> dict[str, tuple[int, tuple[int, ...], int]]:
    """name -> (dtype, shape, bytes received); checks the stream's structure on the way."""
    assert call.replies, f"{call.method}: no reply"
    assert call.replies[0].WhichOneof("kind") == "header", f"{call.method}: no header first"
    out, current = {}, None
    for reply in call.replies[1:]:
        assert reply.WhichOneof("kind") == "chunk", f"{call.method}: a second header"
        chunk = reply.chunk
        if chunk.shape or chunk.name != current:  # a new tensor starts
            assert chunk.name not in out, f"{call.method}: tensor '{chunk.name}' sent twice"
            current = chunk.name
            out[current] = [chunk.dtype, tuple(chunk.shape), 0]
        out[current][2] += len(chunk.data)
    return {n: tuple(v) for n, v in out.items()}


def test_replies_hold_exactly_the_contracted_tensors(session):
    describe, calls = session
    assert [c.method for c in calls].count("Backward") == 4
    for call in calls:
        got = _tensors_of(call)
        assert set(got) == set(call.expected), f"{call.method}: sent {sorted(got)}"
        for name, (dtype, shape, _) in got.items():
            assert (dtype, shape) == call.expected[name], f"{call.method} '{name}'"
        header = call.replies[0].header
        assert 0 < header.device_seconds < 60, f"{call.method}: device time {header.device_seconds}"
        header.ClearField("device_seconds")
        if call.method == "Forward":
            assert header.handle and header.handle_ttl_seconds == describe.limits.handle_ttl_seconds
        else:
            assert header == pb.OutputHeader(), f"{call.method}: header carries {header}"


def test_reply_bytes_are_exactly_what_the_shapes_require(session):
    _, calls = session
    for call in calls:
        got = _tensors_of(call)
        required = sum(
            math.prod(shape) * tensor_codec.TORCH_DTYPES[dtype].itemsize for dtype, shape in call.expected.values()
        )
        data = sum(len(r.chunk.data) for r in call.replies[1:])
        assert data == required, f"{call.method}: {data} bytes of data, shapes require {required}"
        for name, (dtype, shape, received) in got.items():
            assert received == math.prod(shape) * tensor_codec.TORCH_DTYPES[dtype].itemsize, name
        # Besides the data, each chunk carries only its name, dtype and shape.
        for reply in call.replies[1:]:
            assert reply.ByteSize() <= len(reply.chunk.data) + CHUNK_OVERHEAD
        header_bytes = call.replies[0].ByteSize()
        assert header_bytes <= (80 if call.method == "Forward" else 2), call.method


def _bytes_fields(descriptor, seen=None) -> list[str]:
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return []
    seen.add(descriptor.full_name)
    found = []
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_BYTES:
            found.append(f.full_name)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            found += _bytes_fields(f.message_type, seen)
    return found


def test_describe_is_small_and_has_no_bytes(session, backbone):
    describe, _ = session
    assert describe.ByteSize() < 2048
    assert _bytes_fields(pb.DescribeResponse.DESCRIPTOR) == []
    assert _bytes_fields(pb.OutputMessage.DESCRIPTOR) == ["graytune.v1.TensorChunk.data"]  # control
    assert describe.backbone.sha256 == backbone.sha256
    assert describe.embed_dim == backbone.embed_dim


# -- parameter windows ---------------------------------------------------------------------------
def parameter_windows(model: torch.nn.Module) -> list[tuple[str, bytes]]:
    """WINDOW-byte windows, one every STRIDE bytes, of every parameter and buffer with at least
    4 elements that are not all equal, in float32 and in its bfloat16 and float16 casts. Any run
    of STRIDE + WINDOW - 1 bytes of one of them contains a whole window."""
    windows = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach().to("cpu").flatten()
        if not t.is_floating_point() or t.numel() < 4 or bool((t == t[0]).all()):
            continue
        for dtype in CAST_DTYPES:
            c = t.to(dtype).contiguous()
            raw = c.view(torch.uint8).numpy().tobytes()
            size = c.element_size()
            for start in range(0, len(raw) - WINDOW + 1, STRIDE):
                w = raw[start : start + WINDOW]
                if w == w[:size] * (WINDOW // size):
                    continue  # a constant window (zeros, saturated casts) identifies nothing
                windows.append((f"{name}@{start} {dtype}", w))
    return windows


def find_windows(haystack: bytes, windows: list[tuple[str, bytes]]) -> list[str]:
    """Labels of the windows that occur in `haystack`, at any byte offset."""
    index = {haystack[i : i + WINDOW] for i in range(len(haystack) - WINDOW + 1)}
    return [label for label, w in windows if w in index]


@pytest.fixture(scope="module")
def windows(backbone):
    w = parameter_windows(backbone.model)
    names = {label.split("@")[0] for label, _ in w}
    assert len(names) >= 10 and len(w) >= 100, "too few parameters to search for"
    assert any("positional_embedding" in n for n in names)
    return w


def haystack_of(describe, calls) -> bytes:
    return describe.SerializeToString() + b"".join(r.SerializeToString() for c in calls for r in c.replies)


def test_no_parameter_bytes_in_any_reply(session, windows):
    describe, calls = session
    haystack = haystack_of(describe, calls)
    assert len(haystack) > 10_000
    assert find_windows(haystack, windows) == []


def test_window_search_would_catch_a_leak(session, windows, backbone):
    """Positive controls: the search finds parameter bytes placed in a reply, and finds the
    replies' own tensor bytes in the haystack."""
    describe, calls = session
    haystack = haystack_of(describe, calls)
    params = dict(backbone.model.named_parameters())
    for name in ("positional_embedding", "visual.conv1.weight", "text_projection"):
        p = params[name].detach().flatten()
        for dtype in CAST_DTYPES:
            leaked = p.to(dtype).view(torch.uint8).numpy().tobytes()
            hits = find_windows(haystack + leaked, windows)
            assert any(h.startswith(f"{name}@") and str(dtype) in h for h in hits), (name, dtype)
            # As a chunk of a reply, mid-tensor and unaligned.
            offset = 3 + len(leaked) // 3
            chunk = pb.OutputMessage(
                chunk=pb.TensorChunk(
                    name="embeddings", dtype=pb.FLOAT32, shape=[1, 8], data=b"\x01" + leaked[offset : offset + 200]
                )
            )
            assert find_windows(haystack + chunk.SerializeToString(), windows), (name, dtype)
    # The haystack is the replies: the embeddings' own bytes are in it.
    embed = calls[0]
    data = b"".join(r.chunk.data for r in embed.replies[1:])
    assert find_windows(haystack, [("embeddings", data[100 : 100 + WINDOW])]) == ["embeddings"]
