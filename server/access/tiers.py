"""What a caller's tier lets it do, in the contract's words (graytune.contract holds the tiers,
the entry points each may send and which of them receive gradients)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from graytune.contract import GRADIENT_TIERS, IMAGE_PIXEL_ADAPTER, TEXT_TEXTS, entry_point
from graytune.pixel_adapter import PREFIX


def may_differentiate(tier: str) -> bool:
    return tier in GRADIENT_TIERS


def input_entry_points(tower: str, names: Iterable[str], has_texts: bool) -> list[str]:
    """The entry points a request uses: its tensors' names on its tower (a pixel adapter's
    parameters: image.pixel_adapter), and captions if sent."""
    points = [IMAGE_PIXEL_ADAPTER if n.startswith(PREFIX) else entry_point(tower, n) for n in names]
    return list(dict.fromkeys(points)) + ([TEXT_TEXTS] if has_texts else [])


def pixel_gradients_refused(
    key: Any, tower: str, tensors: Mapping[str, torch.Tensor], grad_inputs: Sequence[str]
) -> str | None:
    """Why a Forward request may not be served to `key` (an ApiKey, None without credentials),
    or None: it would differentiate float pixels (every float input is differentiated when
    `grad_inputs` is empty) and the key's owner never returns it a per-pixel gradient. (The
    uint8 pixels of a frugal call have no gradient.)"""
    pixels = tensors.get("pixels")
    if key is None or key.pixel_gradients != "never" or tower != "image" or pixels is None:
        return None
    if not pixels.is_floating_point():
        return None
    if grad_inputs and "pixels" not in grad_inputs:
        return None
    return (
        f"pixels: key {key.id} receives no gradient w.r.t. pixels (its pixel_gradients is never); "
        "train a pixel adapter through the frugal image call (InputHeader.pixel_adapter), or leave "
        "pixels out of grad_inputs"
    )
