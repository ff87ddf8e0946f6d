"""Extraction defences on what Backward returns: per-key clipping and noise.

Input-gradients are what a model-extraction attack needs most. An owner can give a key a
clipping norm and a noise level: each sample's gradient w.r.t. each input is rescaled to at
most `clip_norm` (L2), then Gaussian noise of standard deviation `noise_std` is added to every
element (the Gaussian mechanism's recipe). The caller's training still descends, on a noisier
signal; the accuracy that costs is measured by benchmarks/gradient_protection.py.
"""

from __future__ import annotations

import secrets

import torch

BATCHED_INPUTS = ("pixels",)  # one row per sample; the other inputs are shared by the batch


def protect(
    grads: dict[str, torch.Tensor], clip_norm: float | None, noise_std: float | None
) -> dict[str, torch.Tensor]:
    """{input: gradient} -> the same, clipped and noised (computed in float32, cast back)."""
    if clip_norm is None and noise_std is None:
        return grads
    noise = torch.Generator().manual_seed(secrets.randbits(63))  # unpredictable to the caller
    out = {}
    for name, grad in grads.items():
        g = grad.float()
        rows = g.reshape(g.shape[0], -1) if name in BATCHED_INPUTS else g.reshape(1, -1)  # (N, numel / N)
        if clip_norm is not None:
            scale = (clip_norm / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)  # (N, 1)
            rows = rows * scale
        if noise_std is not None:
            rows = rows + noise_std * torch.randn(rows.shape, generator=noise)
        out[name] = rows.reshape(grad.shape).to(grad.dtype)
    return out
