"""Mutations of a valid request: its tensors, header fields, Backward's handle, the caller's key
and metadata. (The stream's messages: stream_edits.)

A mutation changes a case once and says which statuses that may cause (INVALID_ARGUMENT unless
said otherwise) and whether the request may still be valid. Each thing (a tensor, a header
field, the handle, the key) is changed at most once, so a second mutation never undoes a first.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from hypothesis import strategies as st

from graytune.pixel_adapter import PREFIX
from graytune.tensor_codec import TORCH_DTYPES
from graytune.v1 import oracle_pb2 as pb

from hostile import requests
from hostile.requests import INPUTS, RPCS, STREAMS, Spec, captions, seeds
from hostile.wire import FLOATS, NEVER_ISSUED, Case, Tensor, mutated, raw_bytes, values

S = grpc.StatusCode
HUGE = 20_000  # characters of an enormous string


@dataclass(frozen=True)
class Mutation:
    """`apply(draw, spec, case)` -> the changed case, for cases of `rpcs` it `applies` to."""

    name: str  # the kind it records in Case.kinds
    rpcs: tuple[str, ...]
    applies: Callable[[Spec, Case], bool]
    apply: Callable[..., Case]


def mutation(rpcs, applies=lambda spec, case: True):
    """Decorates fn(draw, spec, case) -> Case."""
    return lambda fn: Mutation(fn.__name__, rpcs, applies, fn)


# -- tensors -----------------------------------------------------------------------------------
def tensor_mutation(applies: Callable[[Tensor], bool], rpcs=STREAMS):
    """Decorates fn(draw, spec, case, tensor) -> Case, for the tensors it applies to that no
    mutation changed yet."""

    def decorate(fn) -> Mutation:
        targets = lambda case: [t for t in case.tensors if t.name not in case.touched and applies(t)]
        return Mutation(
            fn.__name__,
            rpcs,
            lambda spec, case: bool(targets(case)),
            lambda draw, spec, case: fn(draw, spec, case, draw(st.sampled_from(targets(case)))),
        )

    return decorate


def swapped(case: Case, old: Tensor, new: Tensor, kind: str, detail: str, **kw) -> Case:
    tensors = tuple(new if t is old else t for t in case.tensors)
    return mutated(case, kind, f"{old.name} {detail}", touches=(old.name, new.name), tensors=tensors, **kw)


def reshaped(case: Case, t: Tensor, shape: tuple, kind: str, **kw) -> Case:
    """`t` with another shape and bytes that match it."""
    return swapped(case, t, t.replace(shape=shape, data=values(t.dtype, shape)), kind, f"shape {shape}", **kw)


@tensor_mutation(lambda t: True)
def wrong_rank(draw, spec, case, t):
    shape = list(t.shape)
    if shape and draw(st.booleans()):
        del shape[draw(st.integers(0, len(shape) - 1))]
    else:
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(1, 3)))
    return reshaped(case, t, tuple(shape), "wrong_rank")


@tensor_mutation(lambda t: len(t.shape) > 0)
def zero_dim(draw, spec, case, t):  # a scalar where a batch, a vector or a grid was due
    return reshaped(case, t, (), "zero_dim")


@tensor_mutation(lambda t: any(d is not None for d in t.expected))
def wrong_size(draw, spec, case, t):
    i = draw(st.sampled_from([i for i, d in enumerate(t.expected) if d is not None]))
    size = draw(st.integers(1, 2 * t.expected[i] + 2).filter(lambda n: n != t.expected[i]))
    return reshaped(case, t, t.shape[:i] + (size,) + t.shape[i + 1 :], "wrong_size")


@tensor_mutation(lambda t: any(d is not None for d in t.limits), INPUTS)
def over_limit(draw, spec, case, t):
    i = draw(st.sampled_from([i for i, d in enumerate(t.limits) if d is not None]))
    size = t.limits[i] + draw(st.integers(0, 2))
    return reshaped(case, t, t.shape[:i] + (size,) + t.shape[i + 1 :], "over_limit")


@tensor_mutation(lambda t: len(t.shape) > 0)
def zero_size(draw, spec, case, t):
    """A dimension of size 0; extra_tokens with 0 rows may be accepted (no extra tokens)."""
    i = draw(st.integers(0, len(t.shape) - 1))
    return reshaped(
        case, t, t.shape[:i] + (0,) + t.shape[i + 1 :], "zero_size", may_pass=(t.name, i) == ("extra_tokens", 0)
    )  # refused or not: both precise


any_dtype = st.one_of(st.sampled_from(pb.DataType.values()), st.integers(6, 2**31 - 1), st.integers(-(2**31), -1))


@tensor_mutation(lambda t: True)
def dtype(draw, spec, case, t):
    """Another declared dtype, in or out of the enum; a float input may travel in any float."""
    new = draw(any_dtype.filter(lambda d: d != t.dtype))
    data = values(new, t.shape) if new in TORCH_DTYPES else t.data
    name = pb.DataType.Name(new) if new in pb.DataType.values() else str(new)
    valid = t.dtype in FLOATS and new in FLOATS
    return swapped(
        case,
        t,
        t.replace(dtype=new, data=data),
        "dtype",
        name,
        codes=() if valid else (S.INVALID_ARGUMENT,),
        may_pass=valid,
    )


def poked(case: Case, t: Tensor, draw, value, kind: str) -> Case:
    """`t` with one element set to `value`."""
    x = t.to_torch().clone()
    i = draw(st.integers(0, x.numel() - 1))
    x.view(-1)[i] = value
    return swapped(case, t, t.replace(data=raw_bytes(x)), kind, f"[{i}] = {value}")


@tensor_mutation(lambda t: t.dtype in FLOATS and math.prod(t.shape) > 0)
def non_finite(draw, spec, case, t):
    return poked(case, t, draw, draw(st.sampled_from([math.nan, math.inf, -math.inf])), "non_finite")


@tensor_mutation(lambda t: t.name == "token_ids" and t.dtype == pb.INT64 and math.prod(t.shape) > 0, INPUTS)
def token_out_of_range(draw, spec, case, t):
    V = spec.vocab_size
    return poked(case, t, draw, draw(st.sampled_from([-1, V, V + 1, 2**62, -(2**63), 2**63 - 1])), "token_out_of_range")


huge_dims = st.sampled_from([0, 1, 3, 2**31, 2**32, 2**62, 2**63 - 1, -1, -(2**63)])
declared_shapes = st.one_of(
    st.sampled_from(
        [(0, 2**62, 2**62), (2**32, 2**32, 0), (2**63 - 1,), (2**31,) * 4, (1 << 20, 3, 224, 224), (-1, 3, 32, 32)]
    ),
    st.lists(huge_dims, min_size=1, max_size=5).map(tuple).filter(lambda s: max(map(abs, s)) >= 2**31),
)


@tensor_mutation(lambda t: True)
def declared_shape(draw, spec, case, t):
    """A huge (its element count may overflow int64) or negative shape, a few bytes of payload."""
    shape = draw(declared_shapes)
    return swapped(
        case, t, t.replace(shape=shape, data=draw(st.binary(max_size=16))), "declared_shape", f"shape {list(shape)}"
    )


@tensor_mutation(lambda t: len(t.data) > 0)
def bytes_short(draw, spec, case, t):
    n = draw(st.integers(1, len(t.data)))
    return swapped(case, t, t.replace(data=t.data[:-n]), "bytes_short", f"{n} bytes short")


@tensor_mutation(lambda t: True)
def bytes_extra(draw, spec, case, t):
    extra = draw(st.binary(min_size=1, max_size=64))
    return swapped(case, t, t.replace(data=t.data + extra), "bytes_extra", f"{len(extra)} bytes extra")


INPUT_NAMES = ("pixels", "token_ids", "shift", "extra_tokens", "deep_prompts", "context_delta", "embeddings")


@tensor_mutation(lambda t: True)
def rename(draw, spec, case, t):
    """Unknown names, another tower's or RPC's inputs, an empty or enormous name."""
    name = draw(
        st.sampled_from(["weights", "", t.name.upper(), t.name + " ", "x" * HUGE, *INPUT_NAMES]).filter(
            lambda n: n != t.name
        )
    )
    return swapped(case, t, t.replace(name=name), "rename", f"to {name[:20]!r} ({len(name)} chars)")


@tensor_mutation(lambda t: True)
def duplicate(draw, spec, case, t):
    return mutated(case, "duplicate", t.name, touches=(t.name,), tensors=case.tensors + (t,))


def is_frugal(case: Case) -> bool:
    return case.rpc in INPUTS and case.header.HasField("pixel_adapter")


def required(case: Case) -> list[str]:
    """Inputs without which the request is invalid, not yet changed."""
    adapter = [t.name for t in case.tensors if t.name.startswith(PREFIX)] if is_frugal(case) else []
    names = adapter + (
        ["embeddings"]
        if case.rpc == "Backward"
        else ["pixels"]
        if case.header.tower == pb.IMAGE
        else ["context_delta"]
        if case.header.prompt_template
        else []
        if case.header.texts
        else ["token_ids"]
    )
    return [n for n in names if n not in case.touched and case.tensor(n)]


@mutation(STREAMS, lambda spec, case: required(case))
def drop_required(draw, spec, case):
    name = draw(st.sampled_from(required(case)))
    return mutated(
        case, "drop_required", name, touches=(name,), tensors=tuple(t for t in case.tensors if t.name != name)
    )


# -- header fields -----------------------------------------------------------------------------
def header_mutation(rpcs, field: str, applies: Callable[[Case], bool] = lambda case: True):
    """Decorates fn(draw, spec, case, header) -> Case, given a copy of the header to change."""

    def decorate(fn) -> Mutation:
        def apply(draw, spec, case):
            header = type(case.header)()
            header.CopyFrom(case.header)
            changed = fn(draw, spec, case, header)
            return dataclasses.replace(changed, touched=changed.touched | {field})

        untouched = lambda spec, case: field not in case.touched and bool(applies(case))
        return Mutation(fn.__name__, rpcs, untouched, apply)

    return decorate


def is_text(case: Case) -> bool:
    return case.header.tower == pb.TEXT


@header_mutation(INPUTS, "tower")
def tower(draw, spec, case, header):
    header.tower = draw(
        st.sampled_from([pb.TOWER_UNSPECIFIED, pb.IMAGE, pb.TEXT, 3, 2**31 - 1, -1]).filter(
            lambda t: t != case.header.tower
        )
    )
    return mutated(case, "tower", str(header.tower), header=header)


@header_mutation(STREAMS, "output_dtype")
def output_dtype(draw, spec, case, header):
    header.output_dtype = draw(any_dtype.filter(lambda d: d != case.header.output_dtype))
    valid = header.output_dtype in (pb.DATA_TYPE_UNSPECIFIED,) + FLOATS
    return mutated(
        case,
        "output_dtype",
        str(header.output_dtype),
        header=header,
        codes=() if valid else (S.INVALID_ARGUMENT,),
        may_pass=valid,
    )


@header_mutation(INPUTS, "texts", lambda case: not is_text(case))
def texts_on_image(draw, spec, case, header):
    header.texts.extend(draw(st.lists(captions, min_size=1, max_size=3)))
    return mutated(case, "texts_on_image", f"{len(header.texts)} texts", header=header)


def long_text(seed: int, length: int, form: str) -> str:
    """A caption of `length` characters: one random word (tokenising it costs the most), many
    words, one letter repeated, or characters outside ASCII."""
    rng = random.Random(seed)
    letters = {
        "word": "abcdefghijklmnopqrstuvwxyz",
        "words": "abcdefghijklmnopqrstuvwxyz     ",
        "letter": "a",
        "unicode": "猫犬写真のé😀ßΩ",
    }[form]
    return "".join(rng.choice(letters) for _ in range(length))


@header_mutation(INPUTS, "texts", lambda case: is_text(case) and case.header.texts)
def long_caption(draw, spec, case, header):
    i = draw(st.integers(0, len(header.texts) - 1))
    length = draw(st.integers(10_000, 30_000))
    form = draw(st.sampled_from(["word", "words", "letter", "unicode"]))
    header.texts[i] = long_text(draw(seeds), length, form)
    return mutated(case, "long_caption", f"texts[{i}]: {length} characters, {form}", header=header)


@header_mutation(INPUTS, "texts", is_text)
def too_many_texts(draw, spec, case, header):
    n = spec.max_batch + draw(st.integers(1, 3))
    header.texts[:] = draw(st.lists(captions, min_size=1, max_size=1)) * n
    return mutated(case, "too_many_texts", f"{n} texts", header=header)


@header_mutation(INPUTS, "texts", lambda case: is_text(case) and "token_ids" not in case.touched)
def texts_and_token_ids(draw, spec, case, header):
    batch, touches = requests.batch_of(case), ("texts", "token_ids")
    if header.texts:
        return mutated(
            case,
            "texts_and_token_ids",
            "token_ids added",
            header=header,
            touches=touches,
            tensors=case.tensors + (requests.token_ids(draw, spec, batch),),
        )
    header.texts.extend(draw(st.lists(captions, min_size=batch, max_size=batch)))
    return mutated(case, "texts_and_token_ids", "texts added", header=header, touches=touches)


@header_mutation(INPUTS, "prompt_template", is_text)
def prompt_template(draw, spec, case, header):
    """An unknown or enormous template; none beside a context_delta; one beside other inputs."""
    choices = ["a drawing of a", "x" * HUGE, "" if header.prompt_template else spec.template]
    header.prompt_template = draw(st.sampled_from(choices))
    return mutated(case, "prompt_template", repr(header.prompt_template[:20]), header=header)


@header_mutation(INPUTS, "pixel_adapter", lambda case: case.header.tower == pb.IMAGE)
def pixel_adapter(draw, spec, case, header):
    """A declared adapter's size changed (beyond the limits or not: its parameters no longer
    match), one declared beside float pixels, or one taken away from uint8 pixels."""
    if not is_frugal(case):
        header.pixel_adapter.CopyFrom(pb.PixelAdapterSpec(layers=1, channels=1, kernel_size=1))
        return mutated(case, "pixel_adapter", "declared beside float pixels", header=header)
    if draw(st.booleans()):
        header.ClearField("pixel_adapter")
        return mutated(case, "pixel_adapter", "taken away", header=header)
    field, most = draw(st.sampled_from(list(zip(("layers", "channels", "kernel_size"), spec.adapter))))
    now = getattr(header.pixel_adapter, field)
    value = draw(st.one_of(st.integers(-2, most + 2), st.integers(-(2**31), 2**31 - 1)).filter(lambda v: v != now))
    setattr(header.pixel_adapter, field, value)
    return mutated(case, "pixel_adapter", f"{field} = {value}", header=header)


@header_mutation(INPUTS, "grad_inputs")
def grad_inputs(draw, spec, case, header):
    """Absent, unknown, integer, empty or enormous names; a valid name twice may pass. Embed has
    no gradients: it may ignore them."""
    floats = [t.name for t in case.tensors if t.dtype in FLOATS]
    absent = [n for n in INPUT_NAMES if n not in floats][:1]
    choices = [["weights"], [""], ["token_ids"], ["x" * HUGE], absent]
    names = draw(st.sampled_from(choices + ([floats[:1] * 2] if floats else [])))
    header.grad_inputs[:] = names
    return mutated(
        case,
        "grad_inputs",
        f"{[n[:20] for n in names]}",
        header=header,
        may_pass=case.rpc == "Embed" or (len(names) == 2 and names[0] in floats),
    )


# -- Backward's handle -------------------------------------------------------------------------
GARBAGE_HANDLES = [  # (handle, statuses)
    ("", {S.INVALID_ARGUMENT}),
    ("nonsense", {S.INVALID_ARGUMENT}),
    ("a.b.c", {S.INVALID_ARGUMENT}),
    ("deadbeef.-1.0123456789abcdef", {S.INVALID_ARGUMENT}),
    ("deadbeef.\u0661.0123456789abcdef", {S.INVALID_ARGUMENT}),  # a digit, not an ASCII one
    ("x" * HUGE, {S.INVALID_ARGUMENT}),
    ("00000000.1.0123456789abcdef", {S.ABORTED}),  # well formed: another server instance's
]


def has_handle(spec: Spec, case: Case) -> bool:
    """Its handle is not changed yet."""
    return "handle" not in case.touched


@mutation(("Backward",), lambda spec, case: has_handle(spec, case) and case.forward is not None)
def handle_use(draw, spec, case):
    """The Forward's handle used already, changed into one never issued, or the handle of a
    Forward by another caller (who may not send deep prompts)."""
    others = [] if case.forward.tensor("deep_prompts") else ["other caller's"]
    uses = ["consumed", *sorted(NEVER_ISSUED), *others]
    use = draw(st.sampled_from(uses))
    if use == "other caller's":
        return mutated(
            case,
            "handle_use",
            use,
            codes={S.INVALID_ARGUMENT, S.ABORTED},
            touches=("handle",),
            forward=dataclasses.replace(case.forward, key="other"),
        )
    codes = {S.ABORTED} if use == "consumed" else {S.INVALID_ARGUMENT, S.ABORTED}
    return mutated(case, "handle_use", use, codes=codes, touches=("handle",), handle=use)


@mutation(("Backward",), has_handle)
def garbage_handle(draw, spec, case):
    handle, codes = draw(
        st.one_of(st.sampled_from(GARBAGE_HANDLES), st.text(max_size=40).map(lambda h: (h, {S.INVALID_ARGUMENT})))
    )
    header = pb.BackwardHeader(handle=handle, output_dtype=case.header.output_dtype)
    return mutated(
        case,
        "garbage_handle",
        f"{handle[:40]!r} ({len(handle)} chars)",
        codes=codes,
        touches=("handle",),
        header=header,
        forward=None,
    )


@mutation(("Backward",), lambda spec, case: not {"forward", "embeddings", "handle"} & case.touched)
def forward_zero_extra(draw, spec, case):
    """Backward after a Forward whose only input to differentiate is 0 extra tokens: the
    Forward may refuse them, or the gradient of nothing comes back."""
    header = pb.InputHeader(
        tower=pb.TEXT, texts=[draw(captions)], grad_inputs=draw(st.sampled_from([[], ["extra_tokens"]]))
    )
    extra = Tensor("extra_tokens", pb.FLOAT32, (0, spec.token_width), b"")
    forward = Case("Forward", header, (extra,), what=f"Forward TEXT texts×1 extra_tokens{extra.shape}")
    shape = (1, spec.embed_dim)
    grad = Tensor("embeddings", pb.FLOAT32, shape, values(pb.FLOAT32, shape), shape, (None, None))
    return mutated(
        case,
        "forward_zero_extra",
        f"grad_inputs={list(header.grad_inputs)}",
        may_pass=True,
        touches=("forward", "embeddings"),
        forward=forward,
        tensors=(grad,),
    )


# -- who calls, with what metadata -------------------------------------------------------------
@mutation(RPCS, lambda spec, case: "key" not in case.touched)
def credentials(draw, spec, case):
    """No key, a wrong or enormous one, or a key of a lower tier."""
    features = {"shift", "extra_tokens", "deep_prompts"} & {t.name for t in case.tensors}
    features |= {"pixel_adapter"} if is_frugal(case) else set()
    lower_tier = lambda may_pass: (() if may_pass else {S.PERMISSION_DENIED}, may_pass)
    keys = {
        "": ({S.UNAUTHENTICATED}, False),
        "gt_k00000000_wrong": ({S.UNAUTHENTICATED}, False),
        "gt_" + "k" * HUGE: ({S.UNAUTHENTICATED, S.RESOURCE_EXHAUSTED}, False),
        "blackbox": lower_tier(case.rpc == "Describe" or (case.rpc == "Embed" and not features)),
    }
    if case.rpc != "Backward":  # for Backward, a graybox key is "another caller": see handle_use
        keys["other"] = lower_tier("deep_prompts" not in features)
    key = draw(st.sampled_from(sorted(keys)))
    codes, may_pass = keys[key]
    return mutated(
        case,
        "credentials",
        f"key {key[:20]!r} ({len(key)} chars)",
        codes=codes,
        may_pass=may_pass,
        touches=("key",),
        key=key,
    )


@mutation(RPCS, lambda spec, case: "metadata" not in case.touched)
def enormous_metadata(draw, spec, case):
    """gRPC limits metadata it receives: refused precisely, or taken."""
    name = draw(st.sampled_from(["x-graytune-affinity", "x-hostile"]))
    return mutated(
        case,
        "enormous_metadata",
        f"{name}: {HUGE} characters",
        codes={S.RESOURCE_EXHAUSTED},
        may_pass=True,
        touches=("metadata",),
        metadata=((name, "v" * HUGE),),
    )


SEMANTIC = [
    wrong_rank,
    zero_dim,
    wrong_size,
    over_limit,
    zero_size,
    dtype,
    non_finite,
    token_out_of_range,
    declared_shape,
    bytes_short,
    bytes_extra,
    rename,
    duplicate,
    drop_required,
    tower,
    output_dtype,
    texts_on_image,
    long_caption,
    too_many_texts,
    texts_and_token_ids,
    pixel_adapter,
    grad_inputs,
    handle_use,
    garbage_handle,
    forward_zero_extra,
    credentials,
    enormous_metadata,
]
