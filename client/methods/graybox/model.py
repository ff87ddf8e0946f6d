"""GrayboxCLIP: the customer's adapters wrapped around the remote backbone (DGA, `graybox`
tier; with deep prompts, LGA, `graybox-plus` tier).

    pixels -> PixelAdapter -> [oracle image tower (+ DeepPrompts)] -> OutputAdapter -> L2 norm
    captions + TextPrompt(shift, extra tokens) -> [oracle text tower (+ DeepPrompts)]
        -> OutputAdapter -> L2 norm

`adapters="input"` or `"output"` keeps only that side (the paper's ablations); with output
adapters only, nothing learns before the backbone, so no gradient is asked for and every tier
may train them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from graytune.client.methods import adapter_dir
from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.modules.backbone import encode_video
from graytune.client.modules.layers import (
    DeepPrompts,
    LogitScale,
    OutputAdapter,
    PixelAdapter,
    TextPrompt,
    temporal_pooling,
)
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower, RemoteTextTower


class GrayboxCLIP(nn.Module):
    """`cache`: where no input module learns, the backbone's embeddings are fetched once per
    distinct input (see EmbeddingCache)."""

    def __init__(self, config: GrayboxConfig, oracle: OracleClient, cache: EmbeddingCache | None = None):
        super().__init__()
        self.config = config
        inputs, outputs = config.learns_inputs, config.learns_outputs
        self.pixel_adapter = (
            PixelAdapter(config.pixel_layers, config.pixel_channels, config.pixel_kernel_size)
            if inputs
            else nn.Identity()
        )
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
        """PEFT's name for `save_adapters`: config JSON + safetensors, atomically."""
        adapter_dir.save_adapters(directory, self)

    @classmethod
    def from_pretrained(cls, directory, oracle: OracleClient) -> GrayboxCLIP:
        """PEFT's name for `load_adapters`; refuses another backbone."""
        config = adapter_dir.read_config(directory, GrayboxConfig)
        config.check_backbone(oracle)
        return adapter_dir.load_weights(directory, cls(config, oracle))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, E) unit vectors."""
        prompts = self.image_prompts() if self.image_prompts is not None else {}
        return F.normalize(self.image_head(self.image_tower(pixels, adapter=self.pixel_adapter, **prompts)), dim=-1)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) clips -> (B, E) unit vectors; the B·T frames go in one oracle call."""
        return encode_video(self.encode_image, self.temporal_pool, frames)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """N captions -> (N, E) unit vectors."""
        prompts = self.text_prompts() if self.text_prompts is not None else {}
        inputs = self.text_prompt() if self.text_prompt is not None else {}
        return F.normalize(self.text_head(self.text_tower(captions, **inputs, **prompts)), dim=-1)
