"""The image tower's forward, with deep prompts when the caller sends them.

Without prompts this is OpenCLIP's own `encode_image`. With prompts the vision transformer runs
in its parts (OpenCLIP's `_embeds`, the blocks with prompts right after the class token, then
OpenCLIP's `_pool` and projection); the prompt positions are dropped before pooling, so
average pooling sees the image's tokens only.
"""

from __future__ import annotations

import torch

from graytune.server.compute import OpenClipModel, deep_prompts


class ImageTower:
    def __init__(self, model: OpenClipModel):
        self.model = model
        visual = model.visual
        parts = all(hasattr(visual, a) for a in ("_embeds", "_pool", "transformer", "proj"))
        self.prompt_depth = deep_prompts.prompt_depth(visual.transformer) if parts else 0
        self.token_width = int(visual.transformer.width) if self.prompt_depth else 0

    def __call__(self, pixels: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) [+ (D, K, W) deep prompts] -> (B, E) embeddings."""
        if prompts is None:
            return self.model.encode_image(pixels)
        visual = self.model.visual
        x = visual._embeds(pixels)  # (B, 1 + N, W), class token first
        x = deep_prompts.run_with_prompts(visual.transformer, x, prompts, at=1)  # (B, 1 + K + N, W)
        x = torch.cat([x[:, :1], x[:, 1 + prompts.shape[1] :]], dim=1)  # (B, 1 + N, W)
        pooled, _ = visual._pool(x)
        return pooled if visual.proj is None else pooled @ visual.proj
