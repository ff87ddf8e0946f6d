"""Checks on what a caller sent, before any of it reaches the backbone.

Every failure is an `InputError` whose message names the field and the limit it broke. The
service runs `check_header` on a stream's header and `check_names` on its tensors (before the
tier's entry points and the budget are looked at); the oracle's `prepare` runs the rest on
inputs so named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from graytune.contract import ENTRY_POINTS, IMAGE_PIXEL_ADAPTER, TEXT_TEXTS
from graytune.pixel_adapter import PixelAdapterSpec
from graytune.server.compute.errors import InputError
from graytune.server.compute.limits import Limits
from graytune.tensor_codec import MAX_NAME_CHARS, shown

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _tensor_inputs(tower: str) -> tuple[str, ...]:
    """The tower's inputs sent as tensors under their own names: those of its entry points, but
    captions (header texts) and a pixel adapter's parameters (named by its spec: `inputs`)."""
    return tuple(
        point.partition(".")[2]
        for point in ENTRY_POINTS
        if point.partition(".")[0] == tower and point not in (TEXT_TEXTS, IMAGE_PIXEL_ADAPTER)
    )


TOWER_INPUTS = {tower: _tensor_inputs(tower) for tower in ("image", "text")}


BATCHED_INPUTS = ("pixels", "token_ids", "context_delta")  # whose first dimension is a request's batch


def batch_size(tensors: dict[str, torch.Tensor]) -> int:
    """Samples in a request, before validation: the first dimension of its batched input
    (for context_delta, the candidate contexts: one sample each, whatever the class names)."""
    for name in BATCHED_INPUTS:
        if name in tensors and tensors[name].dim() > 0:
            return int(tensors[name].shape[0])
    return 0


def check_header(texts: Sequence[str], grad_inputs: Sequence[str], limits: Limits, prompt_template: str = "") -> None:
    """What a stream's header alone shows to be wrong, refused before any tensor is received."""
    if len(prompt_template) > MAX_NAME_CHARS:
        raise InputError(f"prompt_template: {shown(prompt_template)} is longer than {MAX_NAME_CHARS} characters")
    if len(texts) > limits.max_batch:
        raise InputError(f"texts: batch of {len(texts)} exceeds the limit of {limits.max_batch}")
    for i, text in enumerate(texts):
        size = len(text.encode("utf-8"))
        if size > limits.max_caption_bytes:
            raise InputError(
                f"texts[{i}]: {size} bytes exceed the limit of {limits.max_caption_bytes} bytes per caption"
            )
    most = max(len(TOWER_INPUTS["text"]), 2 * limits.max_pixel_adapter[0] + len(TOWER_INPUTS["image"]))
    if len(grad_inputs) > most:
        raise InputError(f"grad_inputs: {len(grad_inputs)} names; no call has more than {most} inputs")
    for name in grad_inputs:
        if len(name) > MAX_NAME_CHARS:
            raise InputError(f"grad_inputs: {shown(name)} is longer than {MAX_NAME_CHARS} characters")


def inputs(tower: str, pixel_adapter: PixelAdapterSpec | None) -> tuple[str, ...]:
    """The tensor names a request may send: its tower's inputs, and its pixel adapter's parameters."""
    return TOWER_INPUTS[tower] + (tuple(pixel_adapter.parameter_shapes()) if pixel_adapter is not None else ())


def check_pixel_adapter(tower: str, spec: PixelAdapterSpec, limits: Limits) -> None:
    """A declared pixel adapter within the server's limits, from the header alone."""
    most_layers, most_channels, largest_kernel = limits.max_pixel_adapter
    if tower != "image":
        raise InputError("pixel_adapter: only the image tower takes one")
    if most_layers == 0:
        raise InputError("pixel_adapter: this server runs no pixel adapters (Describe's image.pixel_adapter)")
    if not 1 <= spec.layers <= most_layers:
        raise InputError(f"pixel_adapter.layers: {spec.layers}; the limit is 1 to {most_layers}")
    if not 1 <= spec.channels <= most_channels:
        raise InputError(f"pixel_adapter.channels: {spec.channels}; the limit is 1 to {most_channels}")
    if not (1 <= spec.kernel_size <= largest_kernel and spec.kernel_size % 2 == 1):
        raise InputError(f"pixel_adapter.kernel_size: {spec.kernel_size}; must be odd, 1 to {largest_kernel}")


def check_names(tensors: dict[str, torch.Tensor], allowed: Iterable[str], what: str) -> None:
    unexpected = sorted(set(tensors) - set(allowed))
    if unexpected:
        raise InputError(f"{shown(unexpected[0])}: not an input of {what}; expected {sorted(allowed)}")


def check_float(name: str, t: torch.Tensor, shape: Sequence[int | None]) -> None:
    """dtype floating point, shape as given (None: any size), every value finite."""
    if t.dtype not in FLOAT_DTYPES:
        raise InputError(f"{name}: dtype {str(t.dtype)[6:]} not allowed; expected float32, float16 or bfloat16")
    check_shape(name, t, shape)
    if not all_finite(t):
        raise InputError(f"{name}: contains NaN or Inf")


def all_finite(t: torch.Tensor) -> bool:
    """Every value finite. A float sum is finite only if every term is (NaN and ±inf survive
    additions in any order; inf + -inf is NaN), so one pass with no mask settles the usual case:
    0.2 ms against 8 ms for `isfinite(t).all()` on 32 images of 224² here. A sum that overflowed
    from finite terms falls back to the exact check."""
    return bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int | None]) -> None:
    expected = tuple("*" if d is None else d for d in shape)
    if t.dim() != len(shape) or any(d is not None and d != s for d, s in zip(shape, t.shape)):
        raise InputError(f"{name}: shape {tuple(t.shape)} does not match {expected}".replace("'", ""))


def check_batch(name: str, batch: int, limits: Limits) -> None:
    if batch < 1:
        raise InputError(f"{name}: empty batch")
    if batch > limits.max_batch:
        raise InputError(f"{name}: batch of {batch} exceeds the limit of {limits.max_batch}")


def check_image(
    tensors: dict[str, torch.Tensor],
    image_size: tuple[int, int],
    limits: Limits,
    pixel_adapter: PixelAdapterSpec | None = None,
) -> None:
    """Float pixels; or with a pixel adapter, uint8 pixels and every parameter it declares."""
    if "pixels" not in tensors:
        raise InputError("pixels: missing; the image tower needs a (B, 3, H, W) tensor")
    pixels = tensors["pixels"]
    if pixel_adapter is None:
        check_float("pixels", pixels, (None, 3, *image_size))
    else:
        if pixels.dtype != torch.uint8:
            raise InputError(f"pixels: dtype {str(pixels.dtype)[6:]} not allowed with a pixel_adapter; expected uint8")
        check_shape("pixels", pixels, (None, 3, *image_size))
        for name, shape in pixel_adapter.parameter_shapes().items():
            if name not in tensors:
                raise InputError(f"{name}: missing; the declared pixel_adapter needs it, shape {shape}")
            check_float(name, tensors[name], shape)
    check_batch("pixels", pixels.shape[0], limits)


def check_context(
    tensors: dict[str, torch.Tensor], classnames: Sequence[str], context_tokens: int, token_width: int, limits: Limits
) -> None:
    """A prompt_template call: class names in `texts`, (P, N, W) candidate contexts, nothing else."""
    others = sorted(set(tensors) - {"context_delta"})
    if others:
        raise InputError(f"{shown(others[0])}: a prompt_template call takes only context_delta")
    if "context_delta" not in tensors:
        raise InputError(
            f"context_delta: missing; a prompt_template call needs (P, {context_tokens}, "
            f"{token_width}) candidate contexts"
        )
    if not classnames:
        raise InputError("texts: a prompt_template call needs the class names")
    delta = tensors["context_delta"]
    check_float("context_delta", delta, (None, context_tokens, token_width))
    check_batch("context_delta", delta.shape[0], limits)
    rows = delta.shape[0] * len(classnames)
    if rows > limits.max_context_rows:
        raise InputError(
            f"context_delta: {delta.shape[0]} candidates x {len(classnames)} class names = {rows} "
            f"rows exceed the limit of {limits.max_context_rows}"
        )


def check_text(
    tensors: dict[str, torch.Tensor],
    texts: Sequence[str],
    context_length: int,
    token_width: int,
    vocab_size: int,
    limits: Limits,
) -> None:
    if "context_delta" in tensors:
        raise InputError("context_delta: needs a prompt_template in the header")
    ids = tensors.get("token_ids")
    if (ids is None) == (len(texts) == 0):
        raise InputError("texts, token_ids: send exactly one of them")
    if ids is None:
        check_batch("texts", len(texts), limits)
    else:
        if ids.dtype != torch.int64:
            raise InputError(f"token_ids: dtype {str(ids.dtype)[6:]} not allowed; expected int64")
        check_shape("token_ids", ids, (None, context_length))  # before its first dimension is read
        check_batch("token_ids", ids.shape[0], limits)
        if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:  # (B >= 1, L): not empty
            raise InputError(f"token_ids: ids must lie in [0, {vocab_size})")
    if "shift" in tensors:
        check_float("shift", tensors["shift"], (token_width,))
    if "extra_tokens" in tensors:
        extra = tensors["extra_tokens"]
        check_float("extra_tokens", extra, (None, token_width))
        if not 1 <= extra.shape[0] <= limits.max_extra_tokens:  # none: omit the input
            raise InputError(
                f"extra_tokens: {extra.shape[0]} tokens; the limit is 1 to "
                f"{limits.max_extra_tokens} (omit extra_tokens for none)"
            )


def check_deep_prompts(tensors: dict[str, torch.Tensor], tower: str, depth: int, width: int, limits: Limits) -> None:
    """(D, K, W) prompts for the first D of the tower's `depth` blocks, K per block."""
    if "deep_prompts" not in tensors:
        return
    if depth == 0:
        raise InputError(f"deep_prompts: this backbone's {tower} tower takes no deep prompts")
    prompts = tensors["deep_prompts"]
    check_float("deep_prompts", prompts, (None, None, width))
    layers, tokens = prompts.shape[:2]
    if not 1 <= layers <= depth:
        raise InputError(f"deep_prompts: {layers} layers; the {tower} tower takes 1 to {depth}")
    if not 1 <= tokens <= limits.max_deep_prompt_tokens:
        raise InputError(f"deep_prompts: {tokens} tokens per layer; the limit is 1 to {limits.max_deep_prompt_tokens}")


def check_grad_inputs(grad_inputs: Sequence[str], tensors: dict[str, torch.Tensor]) -> list:
    """Names of the inputs to differentiate; default: every floating-point input."""
    floats = [n for n, t in tensors.items() if t.dtype in FLOAT_DTYPES]
    for name in grad_inputs:
        if name not in floats:
            raise InputError(f"grad_inputs: {shown(name)} is not a floating-point input of this call; have {floats}")
    chosen = list(grad_inputs) or floats
    if not chosen:
        raise InputError("grad_inputs: this call has no continuous input to differentiate; use Embed")
    return chosen
