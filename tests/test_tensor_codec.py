"""Tensors on the wire: bit-exact round trips, chunk layout, and malformed streams."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graytune.tensor_codec import (
    TensorAssembler,
    TensorFormatError,
    chunks_to_tensors,
    read_chunk,
    tensor_to_chunks,
    tensor_to_messages,
    tensors_to_chunks,
)
from graytune.v1 import oracle_pb2 as pb

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int64]


def random_bits(shape, dtype, seed=0):
    """A tensor of `dtype` whose bytes are random: NaNs with payloads, infs, subnormals, ..."""
    g = torch.Generator().manual_seed(seed)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (math.prod(shape), itemsize), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_bit_equal(actual: torch.Tensor, expected: torch.Tensor):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert raw_bytes(actual) == raw_bytes(expected)


def round_trip(name, t, **kwargs):
    return chunks_to_tensors(tensor_to_chunks(name, t, **kwargs))[name]


def header(name="x", dtype=pb.FLOAT32, shape=(2,), data=b""):
    return pb.TensorChunk(name=name, dtype=dtype, shape=shape, data=data)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("chunk_bytes", [1, 7, 1 << 20])
def test_round_trip_is_bit_exact(dtype, chunk_bytes):
    t = random_bits((3, 5), dtype)
    assert_bit_equal(round_trip("t", t, chunk_bytes=chunk_bytes), t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_round_trip_keeps_nan_payloads_and_signed_zero(dtype):
    bits = {
        torch.float32: [0x7FC00001, 0xFFC12345, 0x80000000, 0x7F800000, 0x00000001],
        torch.float16: [0x7E01, 0xFE55, 0x8000, 0x7C00, 0x0001],
        torch.bfloat16: [0x7FC1, 0xFF85, 0x8000, 0x7F80, 0x0001],
    }[dtype]
    int_dtype = torch.int32 if dtype == torch.float32 else torch.int16
    t = torch.tensor(np.array(bits, dtype=np.uint32).astype(np.int64)).to(int_dtype).view(dtype)
    assert_bit_equal(round_trip("t", t, chunk_bytes=3), t)


def test_non_contiguous_tensor_arrives_with_its_values():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).T
    assert not t.is_contiguous()
    out = round_trip("t", t, chunk_bytes=5)
    assert out.shape == (4, 3)
    assert torch.equal(out, t)


@pytest.mark.parametrize("shape", [(0, 4), (), (3,), (2, 3, 5)])
@pytest.mark.parametrize("chunk_bytes", [1, 5, 8, 1 << 20])
def test_chunk_sizes_and_count(shape, chunk_bytes):
    t = random_bits(shape, torch.float32)
    chunks = list(tensor_to_chunks("t", t, chunk_bytes=chunk_bytes))
    nbytes = t.numel() * 4
    assert len(chunks) == max(1, -(-nbytes // chunk_bytes))
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    assert sum(len(c.data) for c in chunks) == nbytes
    assert_bit_equal(chunks_to_tensors(chunks)["t"], t)


def test_zero_element_tensor_is_one_empty_chunk_with_its_shape():
    (chunk,) = tensor_to_chunks("empty", torch.zeros(0, 4))
    assert list(chunk.shape) == [0, 4] and chunk.data == b""
    out = chunks_to_tensors([chunk])["empty"]
    assert out.shape == (0, 4) and out.dtype == torch.float32


def test_scalar_round_trips_as_zero_dim_tensor():
    t = torch.tensor(3.25)
    out = round_trip("s", t, chunk_bytes=1)
    assert out.dim() == 0
    assert out.item() == 3.25


@pytest.mark.parametrize("source", [torch.float32, torch.float16], ids=str)
def test_dtype_argument_casts_on_the_way(source):
    t = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)).to(source)
    chunks = list(tensor_to_chunks("t", t, chunk_bytes=10, dtype=torch.bfloat16))
    assert chunks[0].dtype == pb.BFLOAT16
    assert_bit_equal(chunks_to_tensors(chunks)["t"], t.to(torch.bfloat16))


def test_continuation_chunks_carry_only_name_and_data():
    chunks = list(tensor_to_chunks("t", torch.ones(2, 3), chunk_bytes=4))
    assert len(chunks) == 6
    first, rest = chunks[0], chunks[1:]
    assert first.dtype == pb.FLOAT32 and list(first.shape) == [2, 3]
    for c in rest:
        assert c.name == "t"
        assert c.dtype == pb.DATA_TYPE_UNSPECIFIED
        assert list(c.shape) == []


@pytest.mark.parametrize("transpose", [False, True])
def test_wire_bytes_are_little_endian_row_major(transpose):
    t = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    if transpose:
        t = t.T
    data = b"".join(c.data for c in tensor_to_chunks("t", t, chunk_bytes=7))
    assert data == t.numpy().astype("<f4").tobytes(order="C")


def test_several_tensors_in_one_stream():
    tensors = {
        "a": random_bits((2, 3), torch.float16),
        "b": random_bits((5,), torch.int64),
        "c": random_bits((), torch.uint8),
    }
    out = chunks_to_tensors(tensors_to_chunks(tensors, chunk_bytes=3))
    assert list(out) == list(tensors)
    for name, t in tensors.items():
        assert_bit_equal(out[name], t)


def test_encoding_an_unsupported_dtype_raises():
    with pytest.raises(TensorFormatError, match="int32"):
        list(tensor_to_chunks("t", torch.zeros(2, dtype=torch.int32)))


# --- malformed streams ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        [header("pixels", shape=[2], data=bytes(12))],
        [header("pixels", shape=[2], data=bytes(4)), pb.TensorChunk(name="pixels", data=bytes(8))],
    ],
    ids=["first-chunk", "continuation"],
)
def test_too_many_bytes(chunks):
    with pytest.raises(TensorFormatError, match="'pixels'.*more bytes"):
        chunks_to_tensors(chunks)


def test_stream_ending_early():
    assembler = TensorAssembler()
    assembler.add(header("pixels", shape=[2], data=bytes(4)))
    with pytest.raises(TensorFormatError, match="'pixels'.*ended after 4 of 8 bytes"):
        assembler.finish()


def test_second_tensor_before_first_is_complete():
    chunks = [header("pixels", shape=[2], data=bytes(4)), header("shift", shape=[1], data=bytes(4))]
    with pytest.raises(TensorFormatError, match="'pixels'.*'shift'"):
        chunks_to_tensors(chunks)


def test_same_name_twice():
    chunks = [header("pixels", shape=[1], data=bytes(4))] * 2
    with pytest.raises(TensorFormatError, match="'pixels'.*twice"):
        chunks_to_tensors(chunks)


@pytest.mark.parametrize("dtype", [99, pb.DATA_TYPE_UNSPECIFIED])
def test_unsupported_wire_dtype(dtype):
    with pytest.raises(TensorFormatError, match=f"'pixels'.*dtype {dtype} unsupported"):
        chunks_to_tensors([header("pixels", dtype=dtype, shape=[1], data=bytes(4))])


def test_negative_dimension():
    with pytest.raises(TensorFormatError, match="'pixels'.*negative"):
        chunks_to_tensors([header("pixels", shape=[2, -1])])


def test_over_max_tensor_bytes_is_refused_from_the_header_before_allocating():
    # 4 TiB: allocating it first would fail with a RuntimeError (or exhaust memory) instead.
    assembler = TensorAssembler(max_tensor_bytes=1 << 20)
    with pytest.raises(TensorFormatError, match=f"'pixels'.*{4 << 40} bytes exceeds.*{1 << 20}"):
        assembler.add(header("pixels", shape=[1 << 40]))
    assert assembler.tensors == {}


@pytest.mark.parametrize("limit, ok", [(16, True), (15, False)])
def test_max_tensor_bytes_boundary(limit, ok):
    chunks = [header("t", shape=[4], data=bytes(16))]
    if ok:
        assert chunks_to_tensors(chunks, max_tensor_bytes=limit)["t"].shape == (4,)
    else:
        with pytest.raises(TensorFormatError, match="exceeds"):
            chunks_to_tensors(chunks, max_tensor_bytes=limit)


def test_missing_name():
    with pytest.raises(TensorFormatError, match="without a name"):
        chunks_to_tensors([header("", shape=[1], data=bytes(4))])


# --- hostile headers: overflowing shapes, long names, bytes that never come ----------------------
@pytest.mark.parametrize(
    "shape,dtype", [([0, 2**62, 2**62], pb.FLOAT32), ([2**32, 2**32, 0], pb.BFLOAT16), ([1] * 9, pb.UINT8)]
)
def test_a_shape_no_tensor_can_have_is_refused_before_allocating(shape, dtype):
    assembler = TensorAssembler(max_tensor_bytes=1 << 30)
    with pytest.raises(TensorFormatError, match="'x'"):
        assembler.add(pb.TensorChunk(name="x", dtype=dtype, shape=shape))


def test_a_long_name_is_refused_and_shown_capped():
    with pytest.raises(TensorFormatError, match="longer than 64 characters") as e:
        TensorAssembler().add(pb.TensorChunk(name="n" * 20_000, dtype=pb.FLOAT32, shape=[1]))
    assert len(str(e.value)) < 200


def peak_traced_bytes(work) -> int:
    """Peak bytes Python and numpy (which reports its buffers to tracemalloc) held during `work()`."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_nothing_is_allocated_for_a_declared_size_before_its_bytes_arrive():
    assembler = TensorAssembler(max_tensor_bytes=1 << 30)

    def send():
        assembler.add(pb.TensorChunk(name="x", dtype=pb.FLOAT32, shape=[1 << 28], data=b"\0" * 4))
        for _ in range(3):  # 1 GiB declared, 16 bytes sent: the buffer holds at most 4× that
            assembler.add(pb.TensorChunk(name="x", data=b"\0" * 4))

    assert peak_traced_bytes(send) < 1 << 16
    with pytest.raises(TensorFormatError, match="stream ended after 16 of"):
        assembler.finish()


def test_empty_chunks_hold_nothing():
    """A peer that sends chunk after empty chunk of an open tensor costs no memory per chunk."""
    assembler = TensorAssembler()
    assembler.add(pb.TensorChunk(name="x", dtype=pb.FLOAT32, shape=[1], data=b""))
    empty = pb.TensorChunk(name="x", data=b"")

    def send():
        for _ in range(100_000):
            assembler.add(empty)

    assert peak_traced_bytes(send) < 1 << 16
    assembler.add(pb.TensorChunk(name="x", data=bytes(4)))
    assert assembler.finish()["x"].tolist() == [0.0]


@pytest.mark.parametrize("sizes", [[4], [1, 3], [1, 1, 1, 1], [3, 1, 1, 3, 8], [0, 4]], ids=str)
def test_a_tensor_assembled_from_uneven_chunks_is_its_bytes(sizes):
    """The buffer grows while chunks of any size arrive; the tensor is exactly the bytes sent."""
    data = bytes(range(sum(sizes)))
    chunks, at = [], 0
    for i, size in enumerate(sizes):
        head = dict(dtype=pb.UINT8, shape=[len(data)]) if i == 0 else {}
        chunks.append(pb.TensorChunk(name="x", data=data[at : at + size], **head))
        at += size
    tensor = chunks_to_tensors(chunks)["x"]
    assert tensor.numpy().tobytes() == data and tensor.is_contiguous()


# --- serialized stream messages ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    shape=st.lists(st.integers(0, 300), max_size=4),
    dtype=st.sampled_from(DTYPES),
    wire=st.sampled_from([None, torch.bfloat16, torch.float16]),
    chunk_bytes=st.integers(1, 4096),
    name=st.text(max_size=70),
    message=st.sampled_from([pb.InputMessage, pb.OutputMessage, pb.BackwardMessage]),
)
def test_messages_written_by_hand_are_what_protobuf_writes(shape, dtype, wire, chunk_bytes, name, message):
    """Every message `tensor_to_messages` yields is byte for byte protobuf's serialization of
    its chunk in any of the three stream messages (all carry it as field 2), so a peer that
    parses with protobuf (the server, the Node client) sees the very same chunks."""
    if math.prod(shape) > 20_000:
        shape = shape[:1]
    t = random_bits(tuple(shape), dtype)
    cast = wire if dtype.is_floating_point else None
    expected = [message(chunk=c).SerializeToString() for c in tensor_to_chunks(name, t, chunk_bytes, cast)]
    assert list(tensor_to_messages(name, t, chunk_bytes, cast)) == expected


def protobuf_chunk(message: bytes):
    """(name, dtype, shape, data) as protobuf reads the message; None if it is no chunk."""
    parsed = pb.OutputMessage.FromString(message)
    c = parsed.chunk
    return (c.name, c.dtype, tuple(c.shape), c.data) if parsed.WhichOneof("kind") == "chunk" else None


def fast_chunk(message: bytes):
    c = read_chunk(message)
    return None if c is None else (c.name, c.dtype, c.shape, bytes(c.data))


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 40), max_size=4),
    dtype=st.sampled_from(DTYPES),
    chunk_bytes=st.integers(1, 512),
    name=st.text(max_size=70),
)
def test_chunks_are_read_from_their_bytes_as_protobuf_reads_them(shape, dtype, chunk_bytes, name):
    t = random_bits(tuple(shape), dtype)
    # At most ~256 chunks: a 20 MB tensor in 1-byte chunks took minutes and tests nothing more
    # (its big chunks are what reach the 3-byte lengths).
    chunk_bytes = max(chunk_bytes, t.numel() * t.element_size() // 256)
    for message in tensor_to_messages(name, t, chunk_bytes):
        assert fast_chunk(message) == protobuf_chunk(message) is not None


def mutated(message: bytes, edits) -> bytes:
    out = bytearray(message)
    for kind, at, value in edits:
        at %= len(out) + 1
        if kind == "set" and at < len(out):
            out[at] = value
        elif kind == "insert":
            out[at:at] = bytes([value])
        elif kind == "cut":
            del out[at:]
    return bytes(out)


@settings(max_examples=2000, deadline=None)
@given(
    shape=st.lists(st.integers(0, 6), max_size=3),
    name=st.sampled_from(["", "x", "pixels", "é"]),
    edits=st.lists(
        st.tuples(st.sampled_from(["set", "insert", "cut"]), st.integers(0, 200), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    ),
)
def test_a_mangled_message_is_read_as_protobuf_reads_it_or_left_to_protobuf(shape, name, edits):
    """Hostile bytes: whatever the fast reader accepts, protobuf reads the same (a valid chunk
    message); everything else it leaves to protobuf, which names what is wrong."""
    message = mutated(next(tensor_to_messages(name, random_bits(tuple(shape), torch.float16))), edits)
    fast = fast_chunk(message)
    if fast is not None:
        assert fast == protobuf_chunk(message)


def test_a_header_or_a_non_canonical_chunk_is_left_to_protobuf():
    chunk = pb.TensorChunk(name="x", dtype=pb.FLOAT32, shape=[1], data=b"\0" * 4)
    assert read_chunk(pb.OutputMessage(header=pb.OutputHeader(handle="h")).SerializeToString()) is None
    canonical = pb.OutputMessage(chunk=chunk).SerializeToString()
    assert read_chunk(canonical) is not None
    reordered = canonical[:2] + canonical[-6:] + canonical[2:-6]  # data before the name: valid, not ours
    assert protobuf_chunk(reordered) == protobuf_chunk(canonical) and read_chunk(reordered) is None
