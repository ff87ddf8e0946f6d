"""What a key may do, read from Describe before any billed call.

A method needs some of the oracle's entry points ("<tower>.<input>") and, when it trains
through the backbone, gradients (Forward and Backward). Checking both before the first Embed
means a method the key's tier cannot run is refused with one line and costs no samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from graytune.client.transport.oracle_info import OracleInfo
from graytune.contract import (
    IMAGE_DEEP_PROMPTS,
    IMAGE_PIXELS,
    TEXT_CONTEXT_DELTA,
    TEXT_DEEP_PROMPTS,
    TEXT_EXTRA_TOKENS,
    TEXT_SHIFT,
    TEXT_TEXTS,
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
# The methods a customer can run, for telling one what its key allows.
METHODS = {
    "zero-shot evaluation (`graytune eval` without --adapter)": ZERO_SHOT,
    "craft training (--task classify --method craft)": CRAFT,
    "graybox-dga training": Need(BACKBONE_INPUTS | {TEXT_SHIFT, TEXT_EXTRA_TOKENS}, True),
    "graybox-lga training (--method lga)": Need(
        BACKBONE_INPUTS | {TEXT_SHIFT, TEXT_EXTRA_TOKENS, IMAGE_DEEP_PROMPTS, TEXT_DEEP_PROMPTS}, True
    ),
}


class AccessDenied(PermissionError):
    """The key's tier cannot run the method asked for; nothing was sent that costs samples."""


def require(info: OracleInfo, method: str, need: Need) -> None:
    unmet = need.unmet(info)
    if unmet:
        allowed = [name for name, n in METHODS.items() if not n.unmet(info)]
        raise AccessDenied(
            f"this key's tier '{info.tier}' cannot run {method}: it needs "
            f"{' and '.join(unmet)}; tier '{info.tier}' allows "
            f"{'; '.join(allowed) or 'nothing this client offers'}"
        )
