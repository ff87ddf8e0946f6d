"""What a key may do, read from Describe before any billed call.

A method needs some of the oracle's entry points ("<tower>.<input>") and, when it trains
through the backbone, gradients (Forward and Backward). Checking both before the first Embed
means a method the key's tier cannot run is refused with one line and costs no samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from graytune.client.transport.oracle_info import OracleInfo
from graytune.contract import (
    GRADIENT_TIERS,
    IMAGE_DEEP_PROMPTS,
    IMAGE_PIXELS,
    TEXT_CONTEXT_DELTA,
    TEXT_DEEP_PROMPTS,
    TEXT_EXTRA_TOKENS,
    TEXT_SHIFT,
    TEXT_TEXTS,
    TIER_ENTRY_POINTS,
)

BACKBONE_INPUTS = frozenset({IMAGE_PIXELS, TEXT_TEXTS})


@dataclass(frozen=True)
class Need:
    entry_points: frozenset[str]
    gradients: bool

    def unmet(self, info: OracleInfo) -> list:
        """What `info`'s caller lacks for this need, in words; empty when it may run."""
        missing = sorted(self.entry_points - set(info.entry_points))
        return (["gradients (Forward/Backward)"] if self.gradients and not info.gradients else []) + (
            [f"the inputs {', '.join(missing)}"] if missing else []
        )


ZERO_SHOT = Need(BACKBONE_INPUTS, gradients=False)  # the backbone alone: Embed of pixels, captions
CRAFT = Need(BACKBONE_INPUTS | {TEXT_CONTEXT_DELTA}, gradients=False)  # Embed only, any tier
DGA = Need(BACKBONE_INPUTS | {TEXT_SHIFT, TEXT_EXTRA_TOKENS}, gradients=True)
LGA = Need(DGA.entry_points | {IMAGE_DEEP_PROMPTS, TEXT_DEEP_PROMPTS}, gradients=True)
# What a customer can run, in the words they type, for telling one what a key allows.
METHODS = {
    "zero-shot evaluation (`graytune eval` without --adapter)": ZERO_SHOT,
    "--method linear-probe (--task classify)": ZERO_SHOT,
    "--method craft (--task classify)": CRAFT,
    "--method dga --adapters output": ZERO_SHOT,
    "--method dga": DGA,
    "--method lga": LGA,
}


class AccessDenied(PermissionError):
    """The key's tier cannot run the method asked for; nothing was sent that costs samples."""


def tiers_for(need: Need) -> list[str]:
    """The contract's tiers whose keys may run `need`, lowest first."""
    return [
        tier
        for tier, points in TIER_ENTRY_POINTS.items()
        if need.entry_points <= set(points) and (tier in GRADIENT_TIERS or not need.gradients)
    ]


def require(info: OracleInfo, method: str, need: Need) -> None:
    unmet = need.unmet(info)
    if unmet:
        allowed = [name for name, n in METHODS.items() if not n.unmet(info)]
        tiers = " or ".join(f"'{t}'" for t in tiers_for(need))
        raise AccessDenied(
            f"this key's tier '{info.tier}' cannot run {method}: it needs {' and '.join(unmet)}, "
            f"{f'which a key of tier {tiers} has' if tiers else 'which no tier offers'}; tier '{info.tier}' "
            f"allows {'; '.join(allowed) or 'nothing this client offers'}"
        )
