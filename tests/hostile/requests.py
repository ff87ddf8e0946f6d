"""Hypothesis strategies of VALID requests, one per RPC, sized from the server's Describe reply
to a graybox-plus caller (who sees every entry point): small batches, any float wire dtype, any
chunk size, each optional input present or not. Mutations start from these, so every case
reaches the code behind a valid header.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st

from graytune.pixel_adapter import PixelAdapterSpec
from graytune.v1 import oracle_pb2 as pb

from hostile.wire import FLOATS, HANDLE, Case, Tensor, raw_bytes, values

RPCS = ("Describe", "Embed", "Forward", "Backward")
STREAMS = ("Embed", "Forward", "Backward")  # the RPCs whose requests are streams of tensors
INPUTS = ("Embed", "Forward")  # the RPCs whose requests are a tower's inputs
float_dtypes = st.sampled_from(FLOATS)
output_dtypes = st.sampled_from((pb.DATA_TYPE_UNSPECIFIED,) + FLOATS)
seeds = st.integers(0, 1 << 16)
chunk_sizes = st.one_of(st.integers(16, 8192), st.just(1 << 20))  # (1 << 20: the client's)
WORDS = ("a", "photo", "of", "the", "cat", "dog", "digit", "seven", "red", "small")
captions = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
MAX_VALID_TOKENS = 4  # extra and deep prompt tokens in valid requests: room left in the context


@dataclass(frozen=True)
class Spec:
    """What Describe tells a graybox-plus caller, under short names."""

    height: int
    width: int
    context_length: int
    token_width: int  # text
    vocab_size: int
    embed_dim: int
    max_batch: int
    max_extra_tokens: int
    max_prompt_tokens: int  # deep prompt tokens per block
    depth: dict  # tower -> deep prompt layers
    width_of: dict  # tower -> token width of its deep prompts
    template: str  # a prompt template the server offers, for context_delta
    context_tokens: int  # its N
    adapter: tuple[int, int, int]  # the largest pixel adapter (layers, channels, kernel); 0s: none

    @classmethod
    def of(cls, info: pb.DescribeResponse) -> Spec:
        return cls(
            info.image.height,
            info.image.width,
            info.text.context_length,
            info.text.token_width,
            info.text.vocab_size,
            info.embed_dim,
            info.limits.max_batch,
            info.text.max_extra_tokens,
            info.limits.max_deep_prompt_tokens,
            {pb.IMAGE: info.image.deep_prompt_layers, pb.TEXT: info.text.deep_prompt_layers},
            {pb.IMAGE: info.image.token_width, pb.TEXT: info.text.token_width},
            info.text.prompt_templates[0].name,
            info.text.prompt_templates[0].context_tokens,
            (
                info.image.pixel_adapter.max_layers,
                info.image.pixel_adapter.max_channels,
                info.image.pixel_adapter.max_kernel_size,
            ),
        )


def float_tensor(draw, name, shape, expected, limits) -> Tensor:
    dtype = draw(float_dtypes)
    return Tensor(name, dtype, shape, values(dtype, shape, draw(seeds)), expected, limits)


def pixels(draw, spec: Spec, batch: int) -> Tensor:
    return float_tensor(
        draw,
        "pixels",
        (batch, 3, spec.height, spec.width),
        (None, 3, spec.height, spec.width),
        (spec.max_batch + 1, None, None, None),
    )


def frugal_image(draw, spec: Spec, batch: int) -> tuple[pb.PixelAdapterSpec, list[Tensor]]:
    """A pixel adapter of at most 2 layers, 4 channels and kernel 3 (small: fast), within the
    server's limits, and its inputs: uint8 pixels and the adapter's parameters."""
    most_layers, most_channels, largest_kernel = spec.adapter
    adapter = PixelAdapterSpec(
        draw(st.integers(1, min(2, most_layers))),
        draw(st.integers(1, min(4, most_channels))),
        draw(st.sampled_from([k for k in (1, 3) if k <= largest_kernel])),
    )
    shape = (batch, 3, spec.height, spec.width)
    eight_bit = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(draw(seeds)))
    expected, limits = (None, 3, spec.height, spec.width), (spec.max_batch + 1, None, None, None)
    pixels = Tensor("pixels", pb.UINT8, shape, raw_bytes(eight_bit), expected, limits)
    parameters = [float_tensor(draw, n, s, s, (None,) * len(s)) for n, s in adapter.parameter_shapes().items()]
    message = pb.PixelAdapterSpec(layers=adapter.layers, channels=adapter.channels, kernel_size=adapter.kernel_size)
    return message, [pixels, *parameters]


def deep_prompts(draw, spec: Spec, tower: int) -> Tensor:
    """(D, K, width): K tokens at each of the tower's first D blocks."""
    depth, width = spec.depth[tower], spec.width_of[tower]
    shape = (draw(st.integers(1, depth)), draw(st.integers(1, MAX_VALID_TOKENS)), width)
    return float_tensor(draw, "deep_prompts", shape, (None, None, width), (depth + 1, spec.max_prompt_tokens + 1, None))


def token_ids(draw, spec: Spec, batch: int) -> Tensor:
    """(B, L): start of text, a few words, end of text (the highest id), zeros; room left for
    MAX_VALID_TOKENS extra tokens."""
    L, V = spec.context_length, spec.vocab_size
    words = draw(st.integers(0, min(5, L - 3 - MAX_VALID_TOKENS)))
    ids = torch.zeros(batch, L, dtype=torch.int64)
    ids[:, 0], ids[:, words + 1] = V - 2, V - 1
    generator = torch.Generator().manual_seed(draw(seeds))
    ids[:, 1 : words + 1] = torch.randint(0, V - 2, (batch, words), generator=generator)
    return Tensor("token_ids", pb.INT64, (batch, L), raw_bytes(ids), (None, L), (spec.max_batch + 1, None))


def shift(draw, spec: Spec) -> Tensor:
    return float_tensor(draw, "shift", (spec.token_width,), (spec.token_width,), (None,))


def extra_tokens(draw, spec: Spec) -> Tensor:
    return float_tensor(
        draw,
        "extra_tokens",
        (draw(st.integers(1, MAX_VALID_TOKENS)), spec.token_width),
        (None, spec.token_width),
        (spec.max_extra_tokens + 1, None),
    )


def context_delta(draw, spec: Spec) -> Tensor:
    """(P, N, width): P candidate contexts of the template's N tokens."""
    shape = (draw(st.integers(1, 3)), spec.context_tokens, spec.token_width)
    return float_tensor(
        draw, "context_delta", shape, (None, spec.context_tokens, spec.token_width), (spec.max_batch + 1, None, None)
    )


@st.composite
def inputs(draw, spec: Spec, rpc: str) -> Case:
    """A valid Embed or Forward of either tower; a Forward has something to differentiate."""
    tower, batch = draw(st.sampled_from((pb.IMAGE, pb.TEXT))), draw(st.integers(1, 3))
    texts = []
    if tower == pb.TEXT and draw(st.integers(0, 3)) == 0:  # class names under candidate contexts
        header = pb.InputHeader(
            tower=tower,
            texts=draw(st.lists(captions, min_size=batch, max_size=batch)),
            output_dtype=draw(output_dtypes),
            prompt_template=spec.template,
        )
        case = Case(rpc, header, (context_delta(draw, spec),), chunk_bytes=draw(chunk_sizes))
        return replace(case, what=summary(case))
    adapter = None
    if tower == pb.IMAGE and spec.adapter[0] and draw(st.integers(0, 2)) == 0:
        adapter, tensors = frugal_image(draw, spec, batch)
    elif tower == pb.IMAGE:
        tensors = [pixels(draw, spec, batch)]
    elif draw(st.booleans()):
        texts, tensors = draw(st.lists(captions, min_size=batch, max_size=batch)), []
    else:
        tensors = [token_ids(draw, spec, batch)]
    optional = (("shift", "extra_tokens") if tower == pb.TEXT else ()) + ("deep_prompts",)
    for name in draw(st.lists(st.sampled_from(optional), unique=True)):
        tensors.append(
            deep_prompts(draw, spec, tower)
            if name == "deep_prompts"
            else shift(draw, spec)
            if name == "shift"
            else extra_tokens(draw, spec)
        )
    floats = [t.name for t in tensors if t.dtype in FLOATS]
    if rpc == "Forward" and not floats:
        tensors.append(shift(draw, spec))
        floats = ["shift"]
    grad_inputs = draw(st.lists(st.sampled_from(floats), unique=True)) if rpc == "Forward" else []
    header = pb.InputHeader(tower=tower, texts=texts, output_dtype=draw(output_dtypes), grad_inputs=grad_inputs)
    if adapter is not None:
        header.pixel_adapter.CopyFrom(adapter)
    case = Case(rpc, header, tuple(tensors), chunk_bytes=draw(chunk_sizes))
    return replace(case, what=summary(case))


@st.composite
def backward(draw, spec: Spec) -> Case:
    """A valid Forward, then its Backward: dLoss/dEmbeddings (B, E) under the Forward's handle."""
    forward = draw(inputs(spec, "Forward"))
    shape = output_shape(forward, spec.embed_dim)
    grad = float_tensor(draw, "embeddings", shape, shape, (None, None))
    header = pb.BackwardHeader(handle=HANDLE, output_dtype=draw(output_dtypes))
    case = Case("Backward", header, (grad,), chunk_bytes=draw(chunk_sizes), forward=forward)
    return replace(case, what=f"{summary(case)} after [{forward.what}]")


def describe() -> st.SearchStrategy:
    return st.just(Case("Describe", pb.DescribeRequest(), what="Describe"))


def valid(spec: Spec, rpc: str) -> st.SearchStrategy:
    return {
        "Describe": describe,
        "Embed": lambda: inputs(spec, "Embed"),
        "Forward": lambda: inputs(spec, "Forward"),
        "Backward": lambda: backward(spec),
    }[rpc]()


def output_shape(case: Case, embed_dim: int) -> tuple:
    """The embeddings a valid Embed or Forward returns: (B, E), or (P, C, E) for contexts."""
    contexts = case.tensor("context_delta")
    if case.header.prompt_template and contexts is not None:
        return (contexts.shape[0], len(case.header.texts), embed_dim)
    return (batch_of(case), embed_dim)


def batch_of(case: Case) -> int:
    batched = case.tensor("pixels") or case.tensor("token_ids")
    return batched.shape[0] if batched is not None else len(case.header.texts)


def summary(case: Case) -> str:
    """E.g. `Forward TEXT texts×2 shift(128,)FLOAT16 grad_inputs=['shift'] out=FLOAT32 chunk=512`."""
    h = case.header
    parts = [case.rpc]
    if case.rpc != "Backward":
        parts += [pb.Tower.Name(h.tower)] + ([f"texts×{len(h.texts)}"] if h.texts else [])
        parts += [f"template={h.prompt_template[:20]!r}"] if h.prompt_template else []
        if h.HasField("pixel_adapter"):
            a = h.pixel_adapter
            parts.append(f"pixel_adapter={a.layers}x{a.channels}x{a.kernel_size}")
    parts += [f"{t.name}{t.shape}{pb.DataType.Name(t.dtype)}" for t in case.tensors]
    if case.rpc == "Forward":
        parts.append(f"grad_inputs={list(h.grad_inputs)}")
    parts += [f"out={pb.DataType.Name(h.output_dtype)}", f"chunk={case.chunk_bytes}"]
    return " ".join(parts)
