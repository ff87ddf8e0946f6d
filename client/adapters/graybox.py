"""GrayboxCLIP: the customer's adapters wrapped around the remote backbone (DGA, `graybox`
tier; with deep prompts, LGA, `graybox-plus` tier).

    pixels -> PixelAdapter -> [oracle image tower (+ DeepPrompts)] -> OutputAdapter -> L2 norm
    captions + TextPrompt(shift, extra tokens) -> [oracle text tower (+ DeepPrompts)]
        -> OutputAdapter -> L2 norm

`adapters="input"` or `"output"` keeps only that side (the paper's ablations); with output
adapters only, nothing learns before the backbone, so no gradient is asked for and every tier
may train them. ZeroShotCLIP is the backbone alone, sending only pixels and captions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import graytune
from graytune.client.adapters.modules import (DeepPrompts, LogitScale, MeanPooling, OutputAdapter, PixelAdapter,
                                              TextPrompt, temporal_pooling)
from graytune.client.transport.access import BACKBONE_INPUTS, CRAFT, Need
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower, RemoteTextTower


SIDES = ("both", "input", "output")  # which adapters learn
# Methods with no module of GrayboxCLIP's: they classify with modules of their own.
FROZEN_BACKBONE_METHODS = ("linear-probe", "craft")


def craft_settings(info, given: dict) -> dict:
    """CraFT's prompt settings, completed from Describe: the template's context tokens, and the
    projection's std (1/sqrt(d): a z of norm sqrt(d)·sigma moves each element by about sigma)."""
    template = given.get("template", "a photo of a")
    offered = {t.name: t.context_tokens for t in info.text.prompt_templates}
    if template not in offered:
        raise ValueError(f"prompt template {template!r}: the server offers {sorted(offered) or 'none'}")
    dim = given.get("intrinsic_dim", 512)
    return {"template": template, "context_tokens": offered[template], "intrinsic_dim": dim,
            "projection_seed": given.get("projection_seed", 0),
            "projection_std": given.get("projection_std", dim ** -0.5),
            "hidden": given.get("hidden", 256),
            "logit_scale": given.get("logit_scale", 100.0)}  # CLIP's learned one, as the paper scores


class BackboneMismatch(RuntimeError):
    """Adapters trained against one backbone were pointed at another."""


@dataclass(frozen=True)
class AdapterConfig:
    """Everything needed to rebuild the adapters; written as adapter_config.json."""
    embed_dim: int
    token_width: int
    backbone_name: str
    backbone_sha256: str
    method: str = "graybox-dga"
    pixel_layers: int = 2
    pixel_channels: int = 8
    pixel_kernel_size: int = 3
    extra_tokens: int = 1
    deep_prompt_depth: int = 0  # blocks of each tower that get prompts; 0: none (DGA)
    deep_prompt_tokens: int = 4  # per block
    image_token_width: int = 0  # width of the image tower's tokens, for its deep prompts
    adapters: str = "both"  # one of SIDES
    classes: int = 0  # outputs of a linear probe
    domains: tuple = ()  # image domains with adapters of their own (sketch, photo); () : image and text
    temporal_pooling: str = "mean"  # how a video's frame embeddings become one: mean or attention
    task: dict = field(default_factory=dict)  # what the task needs at inference (class names, ...)
    craft: dict = field(default_factory=dict)  # method craft: its prompt's settings (craft/model.py)
    protocol_version: str = graytune.PROTOCOL_VERSION

    def __post_init__(self):
        if self.adapters not in SIDES:
            raise ValueError(f"adapters must be one of {', '.join(SIDES)}, not {self.adapters!r}")
        if self.deep_prompt_depth and self.adapters == "output":
            raise ValueError("deep prompts are input modules: they need adapters 'input' or 'both'")

    @classmethod
    def for_oracle(cls, oracle: OracleClient, method: str = "graybox-dga", **sizes) -> "AdapterConfig":
        """Sizes from the oracle's Describe. LGA's depth defaults to every layer the key is
        offered deep prompts at; a depth > 0 makes a DGA run LGA."""
        info = oracle.describe()
        offered = min(info.image.deep_prompt_layers, info.text.deep_prompt_layers)
        if method == "graybox-lga" and not sizes.get("deep_prompt_depth"):
            sizes["deep_prompt_depth"] = max(offered, 1)  # 1 on a key offered none: refused below
        depth = sizes.get("deep_prompt_depth", 0)
        if depth > offered:
            raise ValueError(f"deep_prompt_depth {depth}: {oracle.endpoint} offers deep prompts at "
                             f"{offered} layers to this key (tier '{info.tier}')")
        if method in ("graybox-dga", "graybox-lga"):
            method = "graybox-lga" if depth else "graybox-dga"
        if method == "craft":
            sizes["craft"] = craft_settings(info, sizes.get("craft", {}))
        return cls(embed_dim=info.embed_dim, token_width=info.text.token_width,
                   image_token_width=info.image.token_width, backbone_name=info.backbone.name,
                   backbone_sha256=info.backbone.sha256, method=method, **sizes)

    @property
    def learns_inputs(self) -> bool:
        return self.method not in FROZEN_BACKBONE_METHODS and self.adapters in ("both", "input")

    @property
    def learns_outputs(self) -> bool:
        return self.method not in FROZEN_BACKBONE_METHODS and self.adapters in ("both", "output")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"adapter_config.json: unknown keys {unknown}")
        return cls(**{**values, "domains": tuple(values.get("domains", ()))})  # JSON: a list

    def need(self, training: bool) -> Need:
        """The oracle access these adapters use: the inputs they send, and gradients when an
        input module is trained (output modules train on the client alone)."""
        backbone = {"image.pixels"} if self.domains else BACKBONE_INPUTS
        if self.method == "craft":
            return CRAFT
        if not self.learns_inputs:
            return Need(frozenset(backbone), gradients=False)
        points = set(backbone) | ({"image.deep_prompts"} if self.deep_prompt_depth else set())
        if not self.domains:
            points |= {"text.shift"} | ({"text.extra_tokens"} if self.extra_tokens else set())
            points |= {"text.deep_prompts"} if self.deep_prompt_depth else set()
        return Need(frozenset(points), training)

    def check_backbone(self, oracle: OracleClient) -> None:
        backbone = oracle.describe().backbone
        if (backbone.name, backbone.sha256) != (self.backbone_name, self.backbone_sha256):
            raise BackboneMismatch(
                f"these adapters were trained against {self.backbone_name} "
                f"(sha256 {self.backbone_sha256[:16]}…), but {oracle.endpoint} serves "
                f"{backbone.name} (sha256 {backbone.sha256[:16]}…)")


class GrayboxCLIP(nn.Module):
    """`cache`: where no input module learns, the backbone's embeddings are fetched once per
    distinct input (see EmbeddingCache)."""

    def __init__(self, config: AdapterConfig, oracle: OracleClient, cache: Optional[EmbeddingCache] = None):
        super().__init__()
        self.config = config
        inputs, outputs = config.learns_inputs, config.learns_outputs
        self.pixel_adapter = PixelAdapter(config.pixel_layers, config.pixel_channels,
                                          config.pixel_kernel_size) if inputs else nn.Identity()
        self.text_prompt = TextPrompt(config.token_width, config.extra_tokens) if inputs else None
        depth, tokens = config.deep_prompt_depth, config.deep_prompt_tokens
        self.image_prompts = DeepPrompts(depth, tokens, config.image_token_width) if depth else None
        self.text_prompts = DeepPrompts(depth, tokens, config.token_width) if depth else None
        self.image_head = OutputAdapter(config.embed_dim) if outputs else nn.Identity()
        self.text_head = OutputAdapter(config.embed_dim) if outputs else nn.Identity()
        self.logit_scale = LogitScale()
        self.temporal_pool = temporal_pooling(config.temporal_pooling, config.embed_dim)
        self.image_tower = RemoteImageTower(oracle, None if inputs else cache)
        self.text_tower = RemoteTextTower(oracle, None if inputs else cache)

    def save_pretrained(self, directory) -> None:
        """PEFT's name for `checkpoint.save_adapters`: config JSON + safetensors, atomically."""
        from graytune.client.training.checkpoint import save_adapters  # it imports this module
        save_adapters(directory, self)

    @classmethod
    def from_pretrained(cls, directory, oracle: OracleClient) -> "GrayboxCLIP":
        """PEFT's name for `checkpoint.load_adapters`; refuses another backbone."""
        from graytune.client.training.checkpoint import load_adapters
        return load_adapters(directory, oracle)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, E) unit vectors."""
        prompts = self.image_prompts() if self.image_prompts is not None else {}
        return F.normalize(self.image_head(self.image_tower(self.pixel_adapter(pixels), **prompts)), dim=-1)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) clips -> (B, E) unit vectors; the B·T frames go in one oracle call."""
        return encode_video(self.encode_image, self.temporal_pool, frames)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """N captions -> (N, E) unit vectors."""
        prompts = self.text_prompts() if self.text_prompts is not None else {}
        inputs = self.text_prompt() if self.text_prompt is not None else {}
        return F.normalize(self.text_head(self.text_tower(captions, **inputs, **prompts)), dim=-1)


class ZeroShotCLIP(nn.Module):
    """The backbone alone: normalised embeddings of pixels and captions, nothing else sent."""

    def __init__(self, oracle: OracleClient, cache: Optional[EmbeddingCache] = None):
        super().__init__()
        self.image_tower = RemoteImageTower(oracle, cache)
        self.text_tower = RemoteTextTower(oracle, cache)
        self.logit_scale = LogitScale().requires_grad_(False)  # 1/0.07: rankings do not depend on it

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, E) unit vectors."""
        return F.normalize(self.image_tower(pixels), dim=-1)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) clips -> (B, E) unit vectors: the mean of the frames' embeddings."""
        return encode_video(self.encode_image, MeanPooling(), frames)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """N captions -> (N, E) unit vectors."""
        return F.normalize(self.text_tower(captions), dim=-1)


def encode_video(encode_image, pool: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, E): every frame encoded in one call, pooled over time, normalised."""
    per_frame = encode_image(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])  # (B, T, E)
    return F.normalize(pool(per_frame), dim=-1)
