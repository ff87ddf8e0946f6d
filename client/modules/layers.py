"""The customer's learnable modules around the remote backbone (the paper's DGA adapters).

Each starts as the identity, so step 0 reproduces zero-shot: the pixel adapter with Dirac
kernels, the shift at zero, the output adapters as identity matrices. The one exception is an
extra token: it adds a position the backbone attends to, so any extra token moves the text
embeddings (use `extra_tokens=0` for an exact zero-shot start), and so do deep prompts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graytune.pixel_adapter import PixelAdapterSpec


class PixelAdapter(nn.Module):
    """(B, 3, H, W) -> (B, 3, H, W): 2D convolutions in pixel space, no activation."""

    def __init__(self, layers: int = 2, channels: int = 8, kernel_size: int = 3):
        super().__init__()
        if layers < 1 or kernel_size % 2 == 0:
            raise ValueError("PixelAdapter needs at least one layer and an odd kernel size")
        widths = [3] + [channels] * (layers - 1) + [3]
        convs = [
            nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)
            for c_in, c_out in zip(widths[:-1], widths[1:])
        ]
        for conv in convs:
            nn.init.dirac_(conv.weight)  # channel i passes through unchanged, the rest start at 0
            assert conv.bias is not None  # Conv2d's bias=True
            nn.init.zeros_(conv.bias)
        self.convs = nn.Sequential(*convs)

        self.spec = PixelAdapterSpec(layers, channels, kernel_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.convs(pixels)

    def wire_parameters(self) -> dict[str, torch.Tensor]:
        """The parameters under their wire names ("pixel_adapter.<i>.weight", ...), for the
        frugal image call that runs this adapter on the server."""
        convs: list[nn.Conv2d] = list(self.convs)  # type: ignore[arg-type]
        values = [p for conv in convs for p in (conv.weight, conv.bias) if p is not None]
        return dict(zip(self.spec.parameter_shapes(), values, strict=True))


class TextPrompt(nn.Module):
    """The text input adapter: one shift added to every token embedding, plus K extra tokens
    placed after start-of-text. Both live in the backbone's token-embedding space (width D)."""

    def __init__(self, token_width: int, extra_tokens: int = 1, init_std: float = 0.02):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(token_width))  # (D,)
        self.extra_tokens = nn.Parameter(torch.randn(extra_tokens, token_width) * init_std)  # (K, D)

    def forward(self) -> dict[str, torch.Tensor]:
        """The continuous inputs to send with the captions."""
        inputs: dict[str, torch.Tensor] = {"shift": self.shift}
        if self.extra_tokens.shape[0]:
            inputs["extra_tokens"] = self.extra_tokens
        return inputs


class DeepPrompts(nn.Module):
    """The `graybox-plus` input module: K tokens for each of the backbone's first `depth`
    transformer blocks of one tower, sent as its "deep_prompts" input (VPT-deep, LGA)."""

    def __init__(self, depth: int, tokens: int, token_width: int, init_std: float = 0.02):
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(depth, tokens, token_width) * init_std)  # (depth, K, W)

    def forward(self) -> dict[str, torch.Tensor]:
        return {"deep_prompts": self.prompts}


class OutputAdapter(nn.Module):
    """(B, E) -> (B, E): a linear projection of the embedding, identity at start."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.linear = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(embed_dim))
            self.linear.bias.zero_()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)


class LogitScale(nn.Module):
    """CLIP's learnable temperature, kept on the client; starts at 1/0.07, capped at 100."""

    def __init__(self, init: float = 1 / 0.07):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


class MeanPooling(nn.Module):
    """(B, T, E) frame embeddings -> (B, E): their mean (CLIP4Clip's parameter-free pooling)."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=1)


class AttentionPooling(nn.Module):
    """(B, T, E) -> (B, E): frames weighted by softmax(frame · q), one learned query q. It starts
    at q = 0, uniform weights, so step 0 is mean pooling."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(embed_dim))  # (E,)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(frames @ self.query, dim=1)  # (B, T)
        return (weights.unsqueeze(-1) * frames).sum(dim=1)


POOLING = {"mean": MeanPooling, "attention": AttentionPooling}


def temporal_pooling(kind: str, embed_dim: int) -> nn.Module:
    if kind not in POOLING:
        raise ValueError(f"temporal pooling must be one of {', '.join(POOLING)}, not {kind!r}")
    return MeanPooling() if kind == "mean" else AttentionPooling(embed_dim)
