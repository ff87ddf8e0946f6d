"""Deep prompts (the `graybox-plus` tier's entry point): caller-owned tokens inside the backbone.

A transformer runs with K prompt tokens at positions [at, at + K) of its sequence. Row l of
the caller's (D, K, W) tensor sits there at the input of block l, for the first D blocks: row 0
is inserted before block 0, each later row replaces what the previous block made of the
prompts (VPT-deep, MaPLe's "prompt depth" D). Past block D-1 the prompt positions flow on
like any token. The caller gets gradients w.r.t. its tensor only, never an activation.
"""

from __future__ import annotations

from typing import cast

import torch


def prompt_depth(transformer: torch.nn.Module) -> int:
    """Blocks that can take prompts: all of an OpenCLIP batch-first Transformer's, else none."""
    if not getattr(transformer, "batch_first", False) or not hasattr(transformer, "resblocks"):
        return 0
    return len(_blocks(transformer))


def run_with_prompts(
    transformer: torch.nn.Module, x: torch.Tensor, prompts: torch.Tensor, at: int, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """x (B, N, W), prompts (D, K, W) -> (B, N + K, W): OpenCLIP's Transformer with prompts."""
    batch, k = x.shape[0], prompts.shape[1]
    prompts = prompts.to(x.dtype)
    x = torch.cat([x[:, :at], prompts[0].expand(batch, k, -1), x[:, at:]], dim=1)  # (B, N+K, W)
    for layer, block in enumerate(_blocks(transformer)):
        if 0 < layer < prompts.shape[0]:
            x = torch.cat([x[:, :at], prompts[layer].expand(batch, k, -1), x[:, at + k :]], dim=1)
        x = block(x, attn_mask=attn_mask)
    return x


def causal_mask(size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, size) additive mask, -inf above the diagonal: OpenCLIP's text mask, resized."""
    return torch.full((size, size), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)


def _blocks(transformer: torch.nn.Module) -> torch.nn.ModuleList:
    return cast(torch.nn.ModuleList, transformer.resblocks)  # an OpenCLIP Transformer's blocks
