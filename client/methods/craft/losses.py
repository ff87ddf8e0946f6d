"""The prediction-consistent losses of CraFT: each module learns the labels and, with weight
lambda, the other module's predictions (KL divergence, the other's softmax as the target)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_to(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(logits)) over the last dim, mean over the rest except the
    leading ones: (..., B, C) -> (...)."""
    kl = F.kl_div(logits.log_softmax(-1), target_logits.log_softmax(-1), log_target=True, reduction="none")
    return kl.sum(-1).mean(-1)


def prompt_fitness(
    prompt_logits: torch.Tensor, refined: torch.Tensor, labels: torch.Tensor, weight: float
) -> torch.Tensor:
    """(P, B, C) candidates' logits, (P, B, C) refined, (B,) labels -> (P,) CMA-ES fitness:
    CE(prompt, y) + weight * KL(refined || prompt)."""
    ce = F.cross_entropy(
        prompt_logits.transpose(1, 2), labels.expand(prompt_logits.shape[0], -1), reduction="none"
    ).mean(-1)
    return ce + weight * kl_to(refined, prompt_logits)


def refinement_loss(
    refined: torch.Tensor, prompt_logits: torch.Tensor, labels: torch.Tensor, weight: float
) -> torch.Tensor:
    """(B, C), (B, C), (B,) -> CE(refined, y) + weight * KL(prompt || refined)."""
    return F.cross_entropy(refined, labels) + weight * kl_to(prompt_logits, refined)
