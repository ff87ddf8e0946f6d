"""Two image domains through the one remote image tower (sketch-image retrieval).

    pixels of domain d -> PixelAdapter[d] -> [oracle image tower (+ DeepPrompts)] -> OutputAdapter[d] -> L2 norm

Each domain has its own input and output adapter, as the paper adapts sketches and photos; the
text side is not used. The domains of a step are sent to the oracle in one call (in frugal image
calls, one per domain: each brings its own adapter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.modules.layers import DeepPrompts, LogitScale, OutputAdapter, PixelAdapter
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower, frugal_pixels


class CrossDomainCLIP(nn.Module):
    def __init__(self, config: GrayboxConfig, oracle: OracleClient, cache: EmbeddingCache | None = None):
        super().__init__()
        self.config = config
        inputs, outputs = config.learns_inputs, config.learns_outputs
        pixel = lambda: PixelAdapter(config.pixel_layers, config.pixel_channels, config.pixel_kernel_size)
        self.pixel_adapters = nn.ModuleDict({d: pixel() if inputs else nn.Identity() for d in config.domains})
        self.heads = nn.ModuleDict(
            {d: OutputAdapter(config.embed_dim) if outputs else nn.Identity() for d in config.domains}
        )
        depth = config.deep_prompt_depth
        self.image_prompts = DeepPrompts(depth, config.deep_prompt_tokens, config.image_token_width) if depth else None
        self.logit_scale = LogitScale()
        self.image_tower = RemoteImageTower(oracle, None if inputs else cache)

    def encode_domains(self, pixels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{domain: (B_d, 3, H, W)} -> {domain: (B_d, E) unit vectors}, in one oracle call."""
        prompts = self.image_prompts() if self.image_prompts is not None else {}
        eight_bit = {d: frugal_pixels(self.image_tower.oracle, self.pixel_adapters[d], p) for d, p in pixels.items()}
        if all(e is not None for e in eight_bit.values()):  # a frugal call per domain: each has its adapter
            adapters = {d: self.pixel_adapters[d] for d in pixels}
            embeddings = [self.image_tower.frugal(eight_bit[d], adapters[d], **prompts) for d in pixels]  # type: ignore[arg-type]
        else:
            adapted = torch.cat([self.pixel_adapters[d](p) for d, p in pixels.items()])  # (sum B_d, 3, H, W)
            embeddings = self.image_tower(adapted, **prompts).split([len(p) for p in pixels.values()])
        return {d: F.normalize(self.heads[d](e), dim=-1) for d, e in zip(pixels, embeddings)}

    def encode_image(self, pixels: torch.Tensor, domain: str) -> torch.Tensor:
        """(B, 3, H, W) images of `domain` -> (B, E) unit vectors."""
        return self.encode_domains({domain: pixels})[domain]
