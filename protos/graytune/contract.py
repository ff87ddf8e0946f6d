"""The words of the wire contract that are not in oracle.proto: the protocol's version, the
metadata headers, the entry points a caller may send into, and the access tiers.

Client, server, the Node test and deploy/ use these names; a test checks the copies that
cannot import Python (deploy/'s configuration, the Node client) against this module.
"""

from __future__ import annotations

from typing import Final

# Major: bumped when the meaning of a message changes; clients refuse a server with another.
# Minor: fields or inputs added (CHANGELOG.md has each version's additions).
PROTOCOL_VERSION: Final = "1.5"

# gRPC metadata keys (lower case, as gRPC sends them).
AUTHORIZATION_HEADER: Final = "authorization"  # "Bearer <API key>"
CALL_ID_HEADER: Final = "x-graytune-call-id"  # a logical call's id, the same on each retry
AFFINITY_HEADER: Final = "x-graytune-affinity"  # a load balancer keeps a Forward and its Backward together

# Entry points, "<tower>.<input>": the inputs a caller may send (Describe lists the caller's).
IMAGE_PIXELS: Final = "image.pixels"
IMAGE_DEEP_PROMPTS: Final = "image.deep_prompts"
IMAGE_PIXEL_ADAPTER: Final = "image.pixel_adapter"  # the frugal image call's adapter parameters
TEXT_TEXTS: Final = "text.texts"
TEXT_TOKEN_IDS: Final = "text.token_ids"
TEXT_CONTEXT_DELTA: Final = "text.context_delta"
TEXT_SHIFT: Final = "text.shift"
TEXT_EXTRA_TOKENS: Final = "text.extra_tokens"
TEXT_DEEP_PROMPTS: Final = "text.deep_prompts"
ENTRY_POINTS: Final = (
    IMAGE_PIXELS,
    IMAGE_PIXEL_ADAPTER,
    IMAGE_DEEP_PROMPTS,
    TEXT_TEXTS,
    TEXT_TOKEN_IDS,
    TEXT_SHIFT,
    TEXT_EXTRA_TOKENS,
    TEXT_DEEP_PROMPTS,
    TEXT_CONTEXT_DELTA,
)


def entry_point(tower: str, name: str) -> str:
    """The entry point of one of a tower's inputs: ("text", "shift") -> "text.shift"."""
    return f"{tower}.{name}"


# Access tiers, by what their keys may send; gradients only to the tiers that may differentiate.
BLACKBOX: Final = "blackbox"
GRAYBOX: Final = "graybox"
GRAYBOX_PLUS: Final = "graybox-plus"
_OUTPUTS_ONLY = (IMAGE_PIXELS, TEXT_TEXTS, TEXT_TOKEN_IDS, TEXT_CONTEXT_DELTA)
TIER_ENTRY_POINTS: Final[dict[str, tuple[str, ...]]] = {
    BLACKBOX: _OUTPUTS_ONLY,
    GRAYBOX: (*_OUTPUTS_ONLY, IMAGE_PIXEL_ADAPTER, TEXT_SHIFT, TEXT_EXTRA_TOKENS),
    GRAYBOX_PLUS: (
        *_OUTPUTS_ONLY,
        IMAGE_PIXEL_ADAPTER,
        TEXT_SHIFT,
        TEXT_EXTRA_TOKENS,
        IMAGE_DEEP_PROMPTS,
        TEXT_DEEP_PROMPTS,
    ),
}
TIERS: Final = tuple(TIER_ENTRY_POINTS)
GRADIENT_TIERS: Final[frozenset[str]] = frozenset({GRAYBOX, GRAYBOX_PLUS})
