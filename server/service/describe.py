"""Describe: what a caller needs to build inputs for this backbone, and what it may do."""

from __future__ import annotations

from typing import Any

import graytune
from graytune.contract import (
    IMAGE_DEEP_PROMPTS,
    IMAGE_PIXEL_ADAPTER,
    PROTOCOL_VERSION,
    TEXT_DEEP_PROMPTS,
    TIER_ENTRY_POINTS,
)
from graytune.server.access.auth import Caller
from graytune.server.access.tiers import may_differentiate
from graytune.server.access.usage import GRADIENTS, SAMPLES
from graytune.server.compute.backbone import Backbone
from graytune.server.compute.limits import Limits
from graytune.server.service.request_stream import UploadPace
from graytune.v1 import oracle_pb2 as pb

# One sample of a budget per image, caption, candidate context and gradient row (the proto's
# Charges says why a candidate context costs one whatever its class names).
CHARGES = pb.Charges(per_image=1, per_caption=1, per_context=1, per_gradient_row=1)


def describe(
    b: Backbone,
    limits: Limits,
    caller: Caller,
    remaining: dict[str, int | None],
    max_calls_per_key: int | None,
    pace: UploadPace,
    rate_scope: str,
) -> pb.DescribeResponse:
    """`remaining`: budget kind -> what the key has left (None: the store did not answer).
    `rate_scope`: what one rate bucket counts ("process" or "shared")."""
    key = caller.key
    budget = (
        {}
        if key is None or key.budget_samples is None
        else _budget("budget", key.budget_samples, remaining.get(SAMPLES))
    )
    rate: dict[str, Any] = (  # DescribeResponse's fields, of several types
        {}
        if key is None or key.rate_per_second is None
        else {"rate_per_second": key.rate_per_second, "rate_limit_scope": rate_scope}
    )
    gradients = (
        {}
        if key is None or key.gradient_budget_samples is None
        else _budget("gradient_budget", key.gradient_budget_samples, remaining.get(GRADIENTS))
    )
    protection = (
        {}
        if key is None
        else {
            name: getattr(key, name)
            for name in ("gradient_clip_norm", "gradient_noise_std")
            if getattr(key, name) is not None
        }
    )
    # The towers' depth is told only to callers who may send deep prompts.
    entry_points = TIER_ENTRY_POINTS[caller.tier]
    deep = {
        tower: getattr(b, tower).prompt_depth if point in entry_points else 0
        for tower, point in (("image", IMAGE_DEEP_PROMPTS), ("text", TEXT_DEEP_PROMPTS))
    }
    layers, channels, kernel = limits.max_pixel_adapter
    adapter = (
        {"pixel_adapter": pb.PixelAdapterLimits(max_layers=layers, max_channels=channels, max_kernel_size=kernel)}
        if layers and IMAGE_PIXEL_ADAPTER in entry_points
        else {}
    )
    return pb.DescribeResponse(
        protocol_version=PROTOCOL_VERSION,
        server_version=graytune.__version__,
        backbone=pb.Backbone(name=b.name, sha256=b.sha256),
        embed_dim=b.embed_dim,
        image=pb.ImageSpec(
            height=b.image_size[0],
            width=b.image_size[1],
            mean=b.image_mean,
            std=b.image_std,
            interpolation=b.interpolation,
            resize_mode=b.resize_mode,
            token_width=b.image.token_width if deep["image"] else 0,
            deep_prompt_layers=deep["image"],
            **adapter,
        ),
        text=pb.TextSpec(
            context_length=b.text.context_length,
            token_width=b.text.token_width,
            vocab_size=b.text.vocab_size,
            max_extra_tokens=limits.max_extra_tokens,
            deep_prompt_layers=deep["text"],
            prompt_templates=[
                pb.PromptTemplate(name=name, context_tokens=len(tokens))
                for name, tokens in b.text.templates.tokens.items()
            ],
        ),
        tier=caller.tier,
        gradients=may_differentiate(caller.tier),
        pixel_gradients=may_differentiate(caller.tier) and (key is None or key.pixel_gradients != "never"),
        entry_points=entry_points,
        limits=pb.Limits(
            max_batch=limits.max_batch,
            max_tensor_bytes=limits.max_tensor_bytes,
            max_message_bytes=limits.max_message_bytes,
            chunk_bytes=limits.chunk_bytes,
            max_graph_bytes=limits.max_graph_bytes,
            handle_ttl_seconds=limits.handle_ttl_seconds,
            max_deep_prompt_tokens=limits.max_deep_prompt_tokens,
            max_call_seconds=limits.max_call_seconds,
            max_caption_bytes=limits.max_caption_bytes,
            max_context_rows=limits.max_context_rows,
            max_calls_per_key=max_calls_per_key or 0,
            max_graph_bytes_per_key=limits.max_graph_bytes_per_key or 0,
            min_upload_bytes_per_second=pace.min_bytes_per_second,
            upload_grace_seconds=pace.grace_seconds,
        ),
        charges=CHARGES,
        caller_id=caller.id,
        **budget,
        **rate,
        **gradients,
        **protection,
    )


def _budget(name: str, total: int, remaining: int | None) -> dict[str, Any]:
    return {f"{name}_samples": total, **({} if remaining is None else {f"{name}_remaining": remaining})}
