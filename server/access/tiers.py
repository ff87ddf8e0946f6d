"""What a caller's tier lets it do, in the contract's words (graytune.contract holds the tiers,
the entry points each may send and which of them receive gradients)."""

from __future__ import annotations

from collections.abc import Iterable

from graytune.contract import GRADIENT_TIERS, TEXT_TEXTS, entry_point


def may_differentiate(tier: str) -> bool:
    return tier in GRADIENT_TIERS


def input_entry_points(tower: str, names: Iterable[str], has_texts: bool) -> list[str]:
    """The entry points a request uses: its tensors' names on its tower, and captions if sent."""
    return [entry_point(tower, n) for n in names] + ([TEXT_TEXTS] if has_texts else [])
