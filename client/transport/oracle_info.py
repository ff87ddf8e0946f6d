"""Describe's answer as the client's code reads it: a typed, immutable OracleInfo, made once at
the edge (OracleClient.info) from the wire message, so nothing above transport/ handles protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from graytune.v1 import oracle_pb2 as pb


@dataclass(frozen=True)
class Backbone:
    name: str
    sha256: str  # identifies the weights, reveals nothing of them


@dataclass(frozen=True)
class ImageInfo:
    height: int
    width: int
    mean: tuple[float, ...]  # per channel: (x - mean) / std
    std: tuple[float, ...]
    interpolation: str
    resize_mode: str  # OpenCLIP's: shortest, longest or squash
    token_width: int
    deep_prompt_layers: int  # offered to this caller (0: none)
    # The largest pixel adapter the server runs for this caller (layers, channels, kernel
    # size): the frugal image call; None where it runs none.
    pixel_adapter: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class TextInfo:
    token_width: int
    deep_prompt_layers: int
    prompt_templates: dict[str, int]  # a template "context_delta" can shift -> its context tokens


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_context_rows: int  # candidate contexts × class names in one context_delta call


@dataclass(frozen=True)
class OracleInfo:
    protocol_version: str
    server_version: str
    tier: str
    entry_points: frozenset[str]  # "<tower>.<input>" this caller may send
    gradients: bool  # whether this caller may call Forward and Backward
    pixel_gradients: bool  # whether Backward may return this caller a gradient w.r.t. pixels
    embed_dim: int
    backbone: Backbone
    image: ImageInfo
    text: TextInfo
    limits: Limits

    @classmethod
    def from_message(cls, m: pb.DescribeResponse) -> OracleInfo:
        image, text = m.image, m.text
        return cls(
            protocol_version=m.protocol_version,
            server_version=m.server_version,
            tier=m.tier,
            entry_points=frozenset(m.entry_points),
            gradients=m.gradients,
            pixel_gradients=m.pixel_gradients,
            embed_dim=m.embed_dim,
            backbone=Backbone(m.backbone.name, m.backbone.sha256),
            image=ImageInfo(
                image.height,
                image.width,
                tuple(image.mean),
                tuple(image.std),
                image.interpolation,
                image.resize_mode,
                image.token_width,
                image.deep_prompt_layers,
                _adapter_limits(image.pixel_adapter) if image.HasField("pixel_adapter") else None,
            ),
            text=TextInfo(
                text.token_width, text.deep_prompt_layers, {t.name: t.context_tokens for t in text.prompt_templates}
            ),
            limits=Limits(m.limits.max_batch, m.limits.max_context_rows),
        )


def _adapter_limits(limits: pb.PixelAdapterLimits) -> tuple[int, int, int]:
    return (limits.max_layers, limits.max_channels, limits.max_kernel_size)
