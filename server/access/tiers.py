"""Access tiers: what a caller may send and whether gradients come back."""
from __future__ import annotations

from typing import Dict, Tuple

# Entry points are "<tower>.<input>"; a gradient is returned only for inputs of a tier that
# may call Forward/Backward.
ENTRY_POINTS: Dict[str, Tuple[str, ...]] = {
    "blackbox": ("image.pixels", "text.texts", "text.token_ids", "text.context_delta"),
    "graybox": ("image.pixels", "text.texts", "text.token_ids", "text.context_delta", "text.shift",
                "text.extra_tokens"),
    "graybox-plus": ("image.pixels", "text.texts", "text.token_ids", "text.context_delta", "text.shift",
                     "text.extra_tokens", "image.deep_prompts", "text.deep_prompts"),
}
GRADIENT_TIERS = ("graybox", "graybox-plus")
TIERS = tuple(ENTRY_POINTS)


def may_differentiate(tier: str) -> bool:
    return tier in GRADIENT_TIERS


def input_entry_points(tower: str, names, has_texts: bool) -> list:
    points = [f"{tower}.{n}" for n in names]
    return points + (["text.texts"] if has_texts else [])
