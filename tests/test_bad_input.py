"""Bad input, end to end: every malformed request gets its precise gRPC status and a message that
names the field (and the limit, where there is one), and the server keeps serving afterwards.

Driven through OracleClient where the client can produce the bad request, and through the raw
stub with hand-built message streams where it cannot. All servers are real processes.
"""

from __future__ import annotations

import math
import threading
import time

import grpc
import pytest
import torch

from graytune import tensor_codec
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.client.transport.remote import RemoteImageTower
from graytune.v1 import oracle_pb2 as pb
from graytune.v1 import oracle_pb2_grpc as pb_grpc

from helpers import SERVER_ARGS

INVALID = grpc.StatusCode.INVALID_ARGUMENT
ABORTED = grpc.StatusCode.ABORTED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

LIMITED_ARGS = ("--max-batch", "4", "--max-tensor-mb", "0.1", "--handle-ttl", "0.5")
SMALL_GRAPH_ARGS = ("--max-graph-mb", "0.001")


# -- servers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def extra_servers():
    """Two servers with tight limits and one of tier graybox-plus (every input), started side
    by side (each takes seconds to import)."""
    servers = {
        "limited": LocalServer([*SERVER_ARGS, *LIMITED_ARGS]),
        "small_graph": LocalServer([*SERVER_ARGS, *SMALL_GRAPH_ARGS]),
        "plus": LocalServer([*SERVER_ARGS, "--tier", "graybox-plus"]),
    }
    errors = []

    def start(s):
        try:
            s.start()
        except Exception as e:  # reported below, in the test process
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="module")
def limited(extra_servers):
    """--max-batch 4, --max-tensor-mb 0.1, --handle-ttl 0.5."""
    return extra_servers["limited"]


@pytest.fixture(scope="module")
def plus(extra_servers):
    """Tier graybox-plus: deep prompts too."""
    return extra_servers["plus"]


@pytest.fixture(scope="module")
def small_graph(extra_servers):
    """--max-graph-mb 0.001: no Forward graph fits."""
    return extra_servers["small_graph"]


def client(endpoint: str, **kw) -> OracleClient:
    return OracleClient(endpoint, timeout=60, retries=0, **kw)


@pytest.fixture(scope="module")
def info(server) -> pb.DescribeResponse:
    with client(server.endpoint) as c:
        return c.describe()


@pytest.fixture(scope="module")
def limited_info(limited) -> pb.DescribeResponse:
    with client(limited.endpoint) as c:
        return c.describe()


@pytest.fixture(scope="module")
def stub(server):
    """The raw stub on the default server, allowed to send more than its receive limit."""
    channel = grpc.insecure_channel(
        server.endpoint, [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    )
    yield pb_grpc.GradientOracleStub(channel)
    channel.close()


# -- helpers -----------------------------------------------------------------------------------
def image_like(info, batch=1, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, info.image.height, info.image.width, generator=g)


_reference = {}  # endpoint -> (Describe reply, embeddings of a fixed image), first seen


def assert_still_serving(endpoint: str) -> None:
    """Describe and a valid Embed answer, with the same results as before the bad call."""
    with client(endpoint) as c:
        described = c.describe()
        pixels = torch.linspace(-2, 2, 3 * described.image.height * described.image.width).reshape(
            1, 3, described.image.height, described.image.width
        )
        embeddings = c.embed_images(pixels)
    assert embeddings.shape == (1, described.embed_dim)
    assert bool(torch.isfinite(embeddings).all())
    first = _reference.setdefault(endpoint, (described, embeddings))
    assert described == first[0]
    assert torch.equal(embeddings, first[1]), "the server answers differently after a bad call"


def expect_error(endpoint: str, call, code: grpc.StatusCode, *fragments: str) -> str:
    """Runs `call`, which must fail with `code` and a message containing every fragment; then
    checks the server still serves. Returns the message."""
    assert_still_serving(endpoint)  # reference taken before the bad call, if not yet
    try:
        call()
    except OracleError as e:
        got, details = e.code, e.details
    except grpc.RpcError as e:
        got, details = e.code(), e.details()
    else:
        pytest.fail(f"expected {code.name}, the call succeeded")
    assert got == code, f"expected {code.name}, got {got}: {details}"
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"
    assert_still_serving(endpoint)
    return details


def in_header(**kw) -> pb.InputMessage:
    return pb.InputMessage(header=pb.InputHeader(**kw))


def in_chunks(name: str, t: torch.Tensor, chunk_bytes: int = 1 << 20) -> list:
    return [pb.InputMessage(chunk=c) for c in tensor_codec.tensor_to_chunks(name, t, chunk_bytes)]


def bw_header(handle: str, **kw) -> pb.BackwardMessage:
    return pb.BackwardMessage(header=pb.BackwardHeader(handle=handle, **kw))


def bw_chunks(t: torch.Tensor, name: str = "embeddings") -> list:
    return [pb.BackwardMessage(chunk=c) for c in tensor_codec.tensor_to_chunks(name, t)]


def raw(rpc, messages) -> list:
    return list(rpc(iter(messages), timeout=60))


def forward_image(c: OracleClient, info, batch=1, seed=0):
    pixels = image_like(info, batch, seed)
    handle, embeddings = c.forward(pb.IMAGE, {"pixels": pixels})
    return pixels, handle, embeddings


def other_handle(handle: str, seq: int) -> str:
    instance, _, token = handle.split(".")
    return f"{instance}.{seq}.{token}"


# -- pixels ------------------------------------------------------------------------------------
def _pixels_cases():
    def shape(*dims):
        return lambda i: torch.zeros(*[d(i) if callable(d) else d for d in dims])

    H = lambda i: i.image.height
    W = lambda i: i.image.width
    nan = lambda v: lambda i: image_like(i).index_put_((torch.tensor([0]),) * 4, torch.tensor(v))
    return [
        ("wrong_height", shape(1, 3, lambda i: H(i) + 1, W), ("shape (1, 3, {h1}, {w})",)),
        ("wrong_hw", shape(2, 3, lambda i: H(i) // 2, lambda i: W(i) // 2), ("shape (2, 3, {h2}, {w2})",)),
        ("one_channel", shape(1, 1, H, W), ("shape (1, 1, {h}, {w})",)),
        ("four_channels", shape(1, 4, H, W), ("shape (1, 4, {h}, {w})",)),
        ("3d", shape(3, H, W), ("shape (3, {h}, {w})",)),
        ("1d", shape(7), ("shape (7,)",)),
        ("int64", lambda i: torch.zeros(1, 3, H(i), W(i), dtype=torch.int64), ("dtype int64", "float32")),
        ("uint8", lambda i: torch.zeros(1, 3, H(i), W(i), dtype=torch.uint8), ("dtype uint8", "float32")),
        ("nan", nan(float("nan")), ("NaN or Inf",)),
        ("inf", nan(float("inf")), ("NaN or Inf",)),
        ("minus_inf", nan(float("-inf")), ("NaN or Inf",)),
    ]


PIXELS_CASES = _pixels_cases()


@pytest.mark.parametrize("method", ["Embed", "Forward"])
@pytest.mark.parametrize("make,fragments", [c[1:] for c in PIXELS_CASES], ids=[c[0] for c in PIXELS_CASES])
def test_bad_pixels(server, oracle, info, method, make, fragments):
    h, w = info.image.height, info.image.width
    fmt = dict(h=h, w=w, h1=h + 1, h2=h // 2, w2=w // 2)
    pixels = make(info)
    call = (
        (lambda: oracle.embed_images(pixels))
        if method == "Embed"
        else (lambda: oracle.forward(pb.IMAGE, {"pixels": pixels}))
    )
    details = expect_error(server.endpoint, call, INVALID, "pixels", *[f.format(**fmt) for f in fragments])
    if "shape" in fragments[0]:
        assert f"(*, 3, {h}, {w})" in details  # names the expected shape too


def test_pixels_0d(server, oracle):
    expect_error(server.endpoint, lambda: oracle.embed_images(torch.tensor(0.5)), INVALID, "pixels")


def test_image_without_pixels(server, stub):
    expect_error(server.endpoint, lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE)]), INVALID, "pixels", "missing")


def test_image_tower_with_texts(server, stub, info):
    expect_error(
        server.endpoint,
        lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE, texts=["a cat"]), *in_chunks("pixels", image_like(info))]),
        INVALID,
        "texts",
        "image tower",
    )


# -- limits: batch, tensor bytes, graph bytes, message bytes -------------------------------------
@pytest.mark.parametrize("method", ["Embed", "Forward"])
def test_pixels_batch_over_limit(limited, limited_info, method):
    max_batch = limited_info.limits.max_batch
    assert max_batch == 4
    with client(limited.endpoint) as c:
        ok = c.embed_images(image_like(limited_info, max_batch))  # the limit itself is allowed
        assert ok.shape == (max_batch, limited_info.embed_dim)
        pixels = image_like(limited_info, max_batch + 1)
        assert pixels.nbytes <= limited_info.limits.max_tensor_bytes  # the batch limit is hit
        call = (
            (lambda: c.embed_images(pixels)) if method == "Embed" else (lambda: c.forward(pb.IMAGE, {"pixels": pixels}))
        )
        expect_error(limited.endpoint, call, INVALID, "pixels", f"batch of {max_batch + 1}", f"limit of {max_batch}")


def test_text_batch_over_limit(limited, limited_info):
    n = limited_info.limits.max_batch + 1
    L = limited_info.text.context_length
    with client(limited.endpoint) as c:
        expect_error(
            limited.endpoint,
            lambda: c.embed_texts(["a cat"] * n),
            INVALID,
            "texts",
            f"batch of {n}",
            f"limit of {n - 1}",
        )
        ids = torch.zeros(n, L, dtype=torch.int64)
        expect_error(
            limited.endpoint,
            lambda: c.embed_texts(token_ids=ids),
            INVALID,
            "token_ids",
            f"batch of {n}",
            f"limit of {n - 1}",
        )


def test_tensor_over_limit_via_client(limited, limited_info):
    limit = limited_info.limits.max_tensor_bytes
    per_image = 3 * limited_info.image.height * limited_info.image.width * 4
    pixels = image_like(limited_info, limit // per_image + 1)
    assert pixels.nbytes > limit
    with client(limited.endpoint) as c:
        expect_error(
            limited.endpoint,
            lambda: c.embed_images(pixels),
            INVALID,
            "pixels",
            str(pixels.nbytes),
            f"limit of {limit} bytes",
        )
        extra = torch.zeros(limit // (4 * limited_info.text.token_width) + 1, limited_info.text.token_width)
        expect_error(
            limited.endpoint,
            lambda: c.embed_texts(["a"], extra_tokens=extra),
            INVALID,
            "extra_tokens",
            f"limit of {limit} bytes",
        )


def test_tensor_over_limit_declared_only(limited, limited_info):
    """A huge declared shape is refused from the first chunk, before its bytes are sent."""
    limit = limited_info.limits.max_tensor_bytes
    h, w = limited_info.image.height, limited_info.image.width
    head = pb.InputMessage(
        chunk=pb.TensorChunk(name="pixels", dtype=pb.FLOAT32, shape=[1 << 20, 3, h, w], data=bytes(16))
    )
    channel = grpc.insecure_channel(limited.endpoint)
    try:
        s = pb_grpc.GradientOracleStub(channel)
        expect_error(
            limited.endpoint,
            lambda: raw(s.Embed, [in_header(tower=pb.IMAGE), head]),
            INVALID,
            "pixels",
            str((1 << 20) * 3 * h * w * 4),
            f"limit of {limit} bytes",
        )
    finally:
        channel.close()


def test_graph_over_limit(small_graph):
    with client(small_graph.endpoint) as c:
        i = c.describe()
        cap = i.limits.max_graph_bytes
        assert cap == int(0.001 * (1 << 20))
        assert c.embed_images(image_like(i)).shape == (1, i.embed_dim)  # Embed keeps no graph
        expect_error(
            small_graph.endpoint,
            lambda: c.forward(pb.IMAGE, {"pixels": image_like(i)}),
            EXHAUSTED,
            "graph",
            f"{cap} bytes",
        )
        shift = torch.zeros(i.text.token_width)
        expect_error(
            small_graph.endpoint,
            lambda: c.forward(pb.TEXT, {"shift": shift}, texts=["a cat"]),
            EXHAUSTED,
            "graph",
            f"{cap} bytes",
        )


def test_message_over_receive_limit(server, stub, info):
    limit = info.limits.max_message_bytes
    h, w = info.image.height, info.image.width
    size = limit + 1024
    batch = math.ceil(size / (3 * h * w * 4))
    chunk = pb.InputMessage(
        chunk=pb.TensorChunk(name="pixels", dtype=pb.FLOAT32, shape=[batch, 3, h, w], data=bytes(size))
    )
    assert chunk.ByteSize() > limit
    expect_error(server.endpoint, lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), chunk]), EXHAUSTED, str(limit))


# -- text inputs -------------------------------------------------------------------------------
def _text_cases():
    D = lambda i: i.text.token_width
    L = lambda i: i.text.context_length
    V = lambda i: i.text.vocab_size
    K = lambda i: i.text.max_extra_tokens

    def ids(i, value=None, length=None, dtype=torch.int64):
        t = torch.zeros(1, length or L(i), dtype=torch.int64)
        t[0, 0], t[0, 2] = V(i) - 2, V(i) - 1  # start, one word, end of text
        if value is not None:
            t[0, 1] = value
        return t.to(dtype)

    def poison(shape, v):
        def make(i):
            t = torch.randn(*[d(i) if callable(d) else d for d in shape])
            t.view(-1)[len(t.view(-1)) // 2] = v
            return t

        return make

    T = ["a cat"]
    return [
        # id, texts, {name: make(info)}, fragments (formatted with D, L, V, K)
        ("shift_narrow", T, {"shift": lambda i: torch.zeros(D(i) - 1)}, ("shift", "({D},)")),
        ("shift_wide", T, {"shift": lambda i: torch.zeros(D(i) + 1)}, ("shift", "({D},)")),
        ("shift_2d", T, {"shift": lambda i: torch.zeros(1, D(i))}, ("shift", "({D},)")),
        ("shift_nan", T, {"shift": poison((D,), float("nan"))}, ("shift", "NaN or Inf")),
        ("shift_inf", T, {"shift": poison((D,), float("inf"))}, ("shift", "NaN or Inf")),
        ("shift_int64", T, {"shift": lambda i: torch.zeros(D(i), dtype=torch.int64)}, ("shift", "dtype int64")),
        (
            "extra_too_many",
            T,
            {"extra_tokens": lambda i: torch.zeros(K(i) + 1, D(i))},
            ("extra_tokens", "{K1} tokens", "1 to {K}"),
        ),
        ("extra_wrong_width", T, {"extra_tokens": lambda i: torch.zeros(2, D(i) + 1)}, ("extra_tokens", "(*, {D})")),
        ("extra_1d", T, {"extra_tokens": lambda i: torch.zeros(D(i))}, ("extra_tokens", "(*, {D})")),
        ("extra_nan", T, {"extra_tokens": poison((2, D), float("nan"))}, ("extra_tokens", "NaN or Inf")),
        ("ids_at_vocab", (), {"token_ids": lambda i: ids(i, V(i))}, ("token_ids", "[0, {V})")),
        ("ids_negative", (), {"token_ids": lambda i: ids(i, -1)}, ("token_ids", "[0, {V})")),
        ("ids_huge", (), {"token_ids": lambda i: ids(i, 1 << 40)}, ("token_ids", "[0, {V})")),
        (
            "ids_float32",
            (),
            {"token_ids": lambda i: ids(i, dtype=torch.float32)},
            ("token_ids", "dtype float32", "int64"),
        ),
        ("ids_uint8", (), {"token_ids": lambda i: ids(i, dtype=torch.uint8)}, ("token_ids", "dtype uint8", "int64")),
        ("ids_short", (), {"token_ids": lambda i: ids(i, length=L(i) - 1)}, ("token_ids", "(*, {L})")),
        ("ids_long", (), {"token_ids": lambda i: ids(i, length=L(i) + 1)}, ("token_ids", "(*, {L})")),
        ("ids_1d", (), {"token_ids": lambda i: ids(i)[0]}, ("token_ids", "(*, {L})")),
        ("texts_and_ids", T, {"token_ids": lambda i: ids(i)}, ("texts", "token_ids", "exactly one")),
        ("neither_but_shift", (), {"shift": lambda i: torch.zeros(D(i))}, ("texts", "token_ids", "exactly one")),
    ]


TEXT_CASES = _text_cases()


@pytest.mark.parametrize("texts,make,fragments", [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_bad_text_inputs(server, oracle, info, texts, make, fragments):
    t = info.text
    fmt = dict(D=t.token_width, L=t.context_length, V=t.vocab_size, K=t.max_extra_tokens, K1=t.max_extra_tokens + 1)
    tensors = {name: m(info) for name, m in make.items()}
    expect_error(
        server.endpoint, lambda: oracle.embed_texts(texts, **tensors), INVALID, *[f.format(**fmt) for f in fragments]
    )


def test_text_inputs_at_their_limits_are_accepted(oracle, info):
    """The refusals above are the limits, not a blanket refusal of these inputs."""
    t = info.text
    e = oracle.embed_texts(
        ["a cat"], shift=torch.zeros(t.token_width), extra_tokens=torch.zeros(t.max_extra_tokens, t.token_width)
    )
    assert e.shape == (1, info.embed_dim)
    ids = torch.zeros(1, t.context_length, dtype=torch.int64)
    ids[0, 0], ids[0, 1], ids[0, 2] = t.vocab_size - 2, t.vocab_size - 3, t.vocab_size - 1
    assert oracle.embed_texts(token_ids=ids).shape == (1, info.embed_dim)


def test_neither_texts_nor_token_ids(server, oracle):
    expect_error(server.endpoint, lambda: oracle.embed_texts([]), INVALID, "texts", "token_ids", "exactly one")


def test_caption_too_long(server, oracle, info):
    """Refused from its words, before BPE: each word is a token at the least."""
    L = info.text.context_length
    long = " ".join(["a"] * L)  # L words + start + end of text
    expect_error(
        server.endpoint,
        lambda: oracle.embed_texts(["a photo of a cat", long]),
        INVALID,
        f"texts[1]: at least {L + 2} tokens + 0 extra tokens exceed the context length {L}",
    )


def test_caption_of_one_enormous_word_too_long(server, oracle, info):
    """A word within --max-caption-bytes that BPE would spend ~0.4 s on."""
    L, limit = info.text.context_length, info.limits.max_caption_bytes
    word = "".join(chr(ord("a") + (i * 7 + i // 26) % 26) for i in range(limit))
    expect_error(
        server.endpoint, lambda: oracle.embed_texts([word]), INVALID, "texts[0]: at least", f"context length {L}"
    )


def test_caption_fits_alone_but_not_with_extra_tokens(server, oracle, info):
    L, D = info.text.context_length, info.text.token_width
    k = min(4, info.text.max_extra_tokens)
    caption = " ".join(["a"] * (L - 2 - k + 1))  # L - k + 1 tokens: room for k - 1 extra tokens
    assert oracle.embed_texts([caption]).shape == (1, info.embed_dim)
    fits = oracle.embed_texts(["a cat", caption], extra_tokens=torch.zeros(k - 1, D))
    assert fits.shape == (2, info.embed_dim)
    expect_error(
        server.endpoint,
        lambda: oracle.embed_texts(["a cat", caption], extra_tokens=torch.zeros(k, D)),
        INVALID,
        "texts[1]",
        f"{k} extra tokens",
        f"context length {L}",
    )
    # Forward checks the same, before any graph is built.
    expect_error(
        server.endpoint,
        lambda: oracle.forward(pb.TEXT, {"extra_tokens": torch.zeros(k, D)}, [caption]),
        INVALID,
        "texts[0]",
        f"context length {L}",
    )


def test_token_ids_fit_alone_but_not_with_extra_tokens(server, oracle, info):
    L, D, V = info.text.context_length, info.text.token_width, info.text.vocab_size
    k = min(4, info.text.max_extra_tokens)
    ids = torch.ones(1, L, dtype=torch.int64)
    ids[0, 0], ids[0, L - k] = V - 2, V - 1  # end of text at L - k: room for k - 1 extra tokens
    assert oracle.embed_texts(token_ids=ids, extra_tokens=torch.zeros(k - 1, D)).shape == (1, info.embed_dim)
    expect_error(
        server.endpoint,
        lambda: oracle.embed_texts(token_ids=ids, extra_tokens=torch.zeros(k, D)),
        INVALID,
        "token_ids",
        f"{k} extra tokens",
        f"context length {L}",
    )


# -- degenerate tensors: 0-d, a dimension of size 0, a wrong rank ---------------------------------
def _valid_inputs(info) -> dict:
    """Per input: (header fields, the other tensors a valid call needs, the input's valid shape
    and dtype)."""
    D, Di, L = info.text.token_width, info.image.token_width, info.text.context_length
    template = info.text.prompt_templates[0]
    image, caption = dict(tower=pb.IMAGE), dict(tower=pb.TEXT, texts=["a cat"])
    return {
        "pixels": (image, {}, (1, 3, info.image.height, info.image.width), torch.float32),
        "image deep_prompts": (image, {"pixels": image_like(info)}, (1, 2, Di), torch.float32),
        "token_ids": (dict(tower=pb.TEXT), {}, (1, L), torch.int64),
        "shift": (caption, {}, (D,), torch.float32),
        "extra_tokens": (caption, {}, (2, D), torch.float32),
        "text deep_prompts": (caption, {}, (1, 2, D), torch.float32),
        "context_delta": (
            dict(tower=pb.TEXT, texts=["cat"], prompt_template=template.name),
            {},
            (1, template.context_tokens, D),
            torch.float32,
        ),
    }


RANKS = {
    "pixels": 4,
    "image deep_prompts": 3,
    "token_ids": 2,
    "shift": 1,
    "extra_tokens": 2,
    "text deep_prompts": 3,
    "context_delta": 3,
    "embeddings": 2,
}
DEGENERATE = ["0-d", "(0,)", "rank + 1", "rank - 1"]


def degenerate(shape: tuple, kind: str) -> tuple:
    """0-d, (0,), one dimension more or fewer, or the valid shape with dimension i of size 0."""
    named = {"0-d": (), "(0,)": (0,), "rank + 1": shape + (1,), "rank - 1": shape[1:]}
    if kind in named:
        return named[kind]
    i = int(kind.split()[-1])
    return shape[:i] + (0,) + shape[i + 1 :]


DEGENERATE_CASES = [
    (name, kind) for name, rank in RANKS.items() for kind in DEGENERATE + [f"dimension {i}" for i in range(rank)]
]


@pytest.mark.parametrize("name,kind", DEGENERATE_CASES, ids=[f"{n}-{k}" for n, k in DEGENERATE_CASES])
def test_degenerate_tensor(plus, name, kind):
    """Every input of both towers and Backward's: INVALID_ARGUMENT naming it, never INTERNAL
    (a 0-d token_ids was an IndexError)."""
    field = name.split()[-1]
    with client(plus.endpoint) as c, grpc.insecure_channel(plus.endpoint) as channel:
        info, s = c.describe(), pb_grpc.GradientOracleStub(channel)
        if field == "embeddings":
            _, handle, embeddings = forward_image(c, info)
            bad = torch.zeros(degenerate(tuple(embeddings.shape), kind))
            call = lambda: raw(s.Backward, [bw_header(handle), *bw_chunks(bad)])
        else:
            header, others, shape, dtype = _valid_inputs(info)[name]
            bad = torch.zeros(degenerate(shape, kind), dtype=dtype)
            messages = [
                in_header(**header),
                *[m for n, t in others.items() for m in in_chunks(n, t)],
                *in_chunks(field, bad),
            ]
            call = lambda: raw(s.Embed, messages)
        expect_error(plus.endpoint, call, INVALID, field)


# -- malformed streams (raw stub) ----------------------------------------------------------------
def _pixels(info, dtype=torch.float32):
    return image_like(info).to(dtype)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_unknown_tensor_name(server, stub, info, tower):
    if tower == "image":
        messages = [in_header(tower=pb.IMAGE), *in_chunks("pixels", _pixels(info))]
    else:
        messages = [in_header(tower=pb.TEXT, texts=["a cat"])]
    messages += in_chunks("weights", torch.zeros(4))
    expect_error(server.endpoint, lambda: raw(stub.Embed, messages), INVALID, "weights", "not an input")


def test_unknown_tensor_name_in_backward(server, oracle, stub, info):
    _, handle, emb = forward_image(oracle, info)
    expect_error(
        server.endpoint,
        lambda: raw(
            stub.Backward, [bw_header(handle), *bw_chunks(torch.ones_like(emb)), *bw_chunks(torch.zeros(4), "weights")]
        ),
        INVALID,
        "weights",
        "Backward",
    )
    assert set(oracle.backward(handle, torch.ones_like(emb))) == {"pixels"}  # not consumed


@pytest.mark.parametrize("rpc", ["Embed", "Forward"])
def test_missing_header(server, stub, info, rpc):
    expect_error(
        server.endpoint,
        lambda: raw(getattr(stub, rpc), in_chunks("pixels", _pixels(info))),
        INVALID,
        "header",
        "first message",
    )
    expect_error(server.endpoint, lambda: raw(getattr(stub, rpc), []), INVALID, "header", "missing")


def test_missing_header_in_backward(server, oracle, stub, info):
    _, handle, emb = forward_image(oracle, info)
    expect_error(
        server.endpoint, lambda: raw(stub.Backward, bw_chunks(torch.ones_like(emb))), INVALID, "header", "first message"
    )
    expect_error(server.endpoint, lambda: raw(stub.Backward, []), INVALID, "header", "missing")
    expect_error(server.endpoint, lambda: raw(stub.Backward, [bw_header(handle)]), INVALID, "embeddings", "missing")
    assert oracle.backward(handle, torch.ones_like(emb))["pixels"].shape == (1, 3, info.image.height, info.image.width)


def test_header_sent_twice(server, stub, info):
    expect_error(
        server.endpoint,
        lambda: raw(
            stub.Embed, [in_header(tower=pb.IMAGE), in_header(tower=pb.IMAGE), *in_chunks("pixels", _pixels(info))]
        ),
        INVALID,
        "header",
        "twice",
    )
    expect_error(
        server.endpoint,
        lambda: raw(
            stub.Embed, [in_header(tower=pb.IMAGE), *in_chunks("pixels", _pixels(info)), in_header(tower=pb.IMAGE)]
        ),
        INVALID,
        "header",
        "twice",
    )


def test_message_with_neither_header_nor_chunk(server, stub, info):
    expect_error(
        server.endpoint,
        lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), pb.InputMessage(), *in_chunks("pixels", _pixels(info))]),
        INVALID,
        "neither header nor chunk",
    )


def test_stream_ended_early(server, stub, info):
    pixels = _pixels(info)
    full = pixels.nbytes
    first = in_chunks("pixels", pixels, chunk_bytes=full // 2)[0]
    assert list(first.chunk.shape) == list(pixels.shape) and len(first.chunk.data) == full // 2
    expect_error(
        server.endpoint,
        lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), first]),
        INVALID,
        "pixels",
        f"{full // 2} of {full} bytes",
    )
    expect_error(
        server.endpoint,
        lambda: raw(stub.Forward, [in_header(tower=pb.IMAGE), first]),
        INVALID,
        "pixels",
        f"{full // 2} of {full} bytes",
    )


def test_next_tensor_before_previous_complete(server, stub, info):
    pixels = _pixels(info)
    half = in_chunks("pixels", pixels, chunk_bytes=pixels.nbytes // 2)[0]
    expect_error(
        server.endpoint,
        lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), half, *in_chunks("pixels2", pixels)]),
        INVALID,
        "pixels",
        f"{pixels.nbytes // 2} of {pixels.nbytes} bytes",
    )


def test_more_bytes_than_declared(server, stub, info):
    pixels = _pixels(info)
    chunk = in_chunks("pixels", pixels)[0]
    chunk.chunk.data += b"\0" * 8
    expect_error(
        server.endpoint,
        lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), chunk]),
        INVALID,
        "pixels",
        "more bytes",
        f"{pixels.nbytes + 8} > {pixels.nbytes}",
    )
    # A further chunk after the tensor is complete starts it again.
    trailing = pb.InputMessage(chunk=pb.TensorChunk(name="pixels", data=b"\0" * 8))
    expect_error(
        server.endpoint,
        lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), *in_chunks("pixels", pixels), trailing]),
        INVALID,
        "pixels",
        "sent twice",
    )


@pytest.mark.parametrize("dtype", [pb.DATA_TYPE_UNSPECIFIED, 42])
def test_chunk_with_unknown_dtype(server, stub, info, dtype):
    chunk = in_chunks("pixels", _pixels(info))[0]
    chunk.chunk.dtype = dtype
    expect_error(
        server.endpoint, lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), chunk]), INVALID, "pixels", "dtype"
    )


def test_chunk_with_negative_dimension(server, stub, info):
    chunk = pb.InputMessage(
        chunk=pb.TensorChunk(name="pixels", dtype=pb.FLOAT32, shape=[-1, 3, info.image.height, info.image.width])
    )
    expect_error(
        server.endpoint, lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), chunk]), INVALID, "pixels", "negative"
    )


def test_chunk_without_name(server, stub, info):
    chunk = in_chunks("", _pixels(info))[0]
    expect_error(
        server.endpoint, lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE), chunk]), INVALID, "without a name"
    )


# -- header fields -----------------------------------------------------------------------------
@pytest.mark.parametrize("rpc", ["Embed", "Forward"])
@pytest.mark.parametrize("dtype", [pb.UINT8, pb.INT64])
def test_output_dtype_refused(server, stub, info, rpc, dtype):
    expect_error(
        server.endpoint,
        lambda: raw(
            getattr(stub, rpc), [in_header(tower=pb.IMAGE, output_dtype=dtype), *in_chunks("pixels", _pixels(info))]
        ),
        INVALID,
        "output_dtype",
        pb.DataType.Name(dtype),
    )


def test_output_dtype_out_of_enum(server, stub, info):
    expect_error(
        server.endpoint,
        lambda: raw(stub.Embed, [in_header(tower=pb.IMAGE, output_dtype=99), *in_chunks("pixels", _pixels(info))]),
        INVALID,
        "output_dtype",
    )


def test_tower_unspecified(server, stub, info):
    expect_error(
        server.endpoint,
        lambda: raw(stub.Embed, [in_header(), *in_chunks("pixels", _pixels(info))]),
        INVALID,
        "tower",
        "IMAGE or TEXT",
    )
    expect_error(
        server.endpoint,
        lambda: raw(stub.Forward, [in_header(tower=pb.TOWER_UNSPECIFIED, texts=["a cat"])]),
        INVALID,
        "tower",
    )


def test_grad_inputs_naming_a_non_input(server, oracle, info):
    D = info.text.token_width
    expect_error(
        server.endpoint,
        lambda: oracle.forward(pb.IMAGE, {"pixels": _pixels(info)}, grad_inputs=["weights"]),
        INVALID,
        "grad_inputs",
        "'weights'",
    )
    expect_error(
        server.endpoint,
        lambda: oracle.forward(pb.TEXT, {"shift": torch.zeros(D)}, ["a cat"], grad_inputs=["extra_tokens"]),
        INVALID,
        "grad_inputs",
        "'extra_tokens'",
    )
    ids = oracle_ids(info)
    expect_error(
        server.endpoint,
        lambda: oracle.forward(pb.TEXT, {"token_ids": ids, "shift": torch.zeros(D)}, grad_inputs=["token_ids"]),
        INVALID,
        "grad_inputs",
        "'token_ids'",
    )


def oracle_ids(info) -> torch.Tensor:
    ids = torch.zeros(1, info.text.context_length, dtype=torch.int64)
    ids[0, 0], ids[0, 1], ids[0, 2] = info.text.vocab_size - 2, 320, info.text.vocab_size - 1
    return ids


def test_forward_with_nothing_differentiable(server, oracle, info):
    expect_error(server.endpoint, lambda: oracle.forward(pb.TEXT, {}, ["a cat"]), INVALID, "grad_inputs", "Embed")
    expect_error(
        server.endpoint,
        lambda: oracle.forward(pb.TEXT, {"token_ids": oracle_ids(info)}),
        INVALID,
        "grad_inputs",
        "Embed",
    )


# -- Backward ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda h: "",
        lambda h: "nonsense",
        lambda h: "a.b.c",
        lambda h: h.rsplit(".", 1)[0],
        lambda h: h + ".1",
        lambda h: h + "0",
        lambda h: h.replace(".", ".-", 1),
        lambda h: other_handle(h, "\u00b2"),  # a unicode digit, not an ASCII one
        lambda h: other_handle(h, "\u0661"),
        lambda h: "x" * 10_000,
    ],
    ids=[
        "empty",
        "word",
        "three_words",
        "two_parts",
        "four_parts",
        "long_token",
        "negative_seq",
        "superscript_seq",
        "arabic_seq",
        "huge",
    ],
)
def test_backward_malformed_handle(server, oracle, stub, info, make):
    _, handle, emb = forward_image(oracle, info)
    bad = make(handle)
    details = expect_error(
        server.endpoint, lambda: oracle.backward(bad, torch.ones_like(emb)), INVALID, "handle", "malformed"
    )
    assert len(details) < 500  # the echo of the handle is bounded
    assert set(oracle.backward(handle, torch.ones_like(emb))) == {"pixels"}


def test_backward_unknown_well_formed_handle(server, oracle, info):
    _, handle, emb = forward_image(oracle, info)
    for seq in (10**12, 0):
        unknown = other_handle(handle, seq)
        expect_error(
            server.endpoint, lambda: oracle.backward(unknown, torch.ones_like(emb)), INVALID, "handle", "unknown"
        )
    assert set(oracle.backward(handle, torch.ones_like(emb))) == {"pixels"}


def test_backward_handle_of_another_instance(server, oracle, limited, limited_info, info):
    with client(limited.endpoint) as c:
        _, foreign, emb = forward_image(c, limited_info)
    expect_error(
        server.endpoint,
        lambda: oracle.backward(foreign, torch.ones_like(emb)),
        ABORTED,
        "handle",
        "another server instance",
    )


def test_backward_consumed_handle(server, oracle, info):
    _, handle, emb = forward_image(oracle, info)
    oracle.backward(handle, torch.ones_like(emb))
    expect_error(
        server.endpoint, lambda: oracle.backward(handle, torch.ones_like(emb)), ABORTED, "handle", "no longer held"
    )


def _fresh_gradient(oracle, info, batch, grad):
    _, handle, _ = forward_image(oracle, info, batch)
    return oracle.backward(handle, grad)["pixels"]


@pytest.mark.parametrize(
    "bad",
    [
        lambda g: g[:, :-1],
        lambda g: torch.cat([g, g[:1]]),
        lambda g: g[0],
        lambda g: g[None],
        lambda g: g.to(torch.int64),
        lambda g: torch.where(g > 0, float("nan"), g),
        lambda g: torch.where(g > 0, float("inf"), g),
        lambda g: torch.where(g > 0, -float("inf"), g),
    ],
    ids=["narrow", "batch_plus_one", "1d", "3d", "int64", "nan", "inf", "minus_inf"],
)
def test_backward_bad_gradient_then_handle_still_works(server, oracle, info, bad):
    batch, E = 2, info.embed_dim
    _, handle, emb = forward_image(oracle, info, batch)
    assert emb.shape == (batch, E)
    grad = torch.randn(batch, E, generator=torch.Generator().manual_seed(1))
    wrong = bad(grad)
    fragment = (
        "dtype int64"
        if wrong.dtype == torch.int64
        else f"({batch}, {E})"
        if wrong.shape != grad.shape
        else "NaN or Inf"
    )
    expect_error(server.endpoint, lambda: oracle.backward(handle, wrong), INVALID, "embeddings", fragment)
    grads = oracle.backward(handle, grad)  # checked before consuming: the handle still works
    assert torch.equal(grads["pixels"], _fresh_gradient(oracle, info, batch, grad))


@pytest.mark.parametrize("dtype", [pb.UINT8, pb.INT64])
def test_backward_output_dtype_refused(server, oracle, stub, info, dtype):
    _, handle, emb = forward_image(oracle, info)
    expect_error(
        server.endpoint,
        lambda: raw(stub.Backward, [bw_header(handle, output_dtype=dtype), *bw_chunks(torch.ones_like(emb))]),
        INVALID,
        "output_dtype",
        pb.DataType.Name(dtype),
    )
    assert set(oracle.backward(handle, torch.ones_like(emb))) == {"pixels"}


def test_backward_header_twice(server, oracle, stub, info):
    _, handle, emb = forward_image(oracle, info)
    expect_error(
        server.endpoint,
        lambda: raw(stub.Backward, [bw_header(handle), bw_header(handle), *bw_chunks(torch.ones_like(emb))]),
        INVALID,
        "header",
        "twice",
    )
    assert set(oracle.backward(handle, torch.ones_like(emb))) == {"pixels"}


# -- handle time-to-live -------------------------------------------------------------------------
def test_expired_handle_is_aborted(limited, limited_info):
    ttl = limited_info.limits.handle_ttl_seconds
    assert ttl == 0.5
    with client(limited.endpoint) as c:
        _, handle, emb = forward_image(c, limited_info)
        time.sleep(ttl + 0.3)
        expect_error(
            limited.endpoint,
            lambda: c.backward(handle, torch.ones_like(emb)),
            ABORTED,
            "handle",
            "no longer held",
            f"{ttl:g} s",
        )


class RecordingClient(OracleClient):
    """The real client, remembering the status of every failed Backward."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.backward_failures = []

    def backward(self, handle, grad_embeddings):
        try:
            return super().backward(handle, grad_embeddings)
        except OracleError as e:
            self.backward_failures.append(e.code)
            raise


def test_autograd_bridge_recovers_from_expired_handle(limited, limited_info):
    ttl = limited_info.limits.handle_ttl_seconds
    pixels = image_like(limited_info, 2, seed=3)
    weights = torch.randn(2, limited_info.embed_dim, generator=torch.Generator().manual_seed(4))
    with RecordingClient(limited.endpoint, timeout=60, retries=0) as c:
        tower = RemoteImageTower(c)
        stale = pixels.clone().requires_grad_()
        loss = (tower(stale) * weights).sum()
        time.sleep(ttl + 0.3)
        loss.backward()  # the server dropped the graph: re-run Forward, then Backward
        assert c.backward_failures == [ABORTED]

        fresh = pixels.clone().requires_grad_()
        (tower(fresh) * weights).sum().backward()
    assert stale.grad is not None and bool(stale.grad.abs().sum() > 0)
    assert torch.equal(stale.grad, fresh.grad)
    assert_still_serving(limited.endpoint)
