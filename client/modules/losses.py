"""CLIP's symmetric InfoNCE, generalised to batches whose items may share a category (a caption
repeated, a sketch category): the one contrastive loss of every task."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def category_contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between (N, E) and (M, E) unit vectors; an item's targets are spread
    evenly over the other side's items of its category. With one item per category on each
    side, matched in order, this is CLIP's loss. Every label must appear on both sides."""
    logits = logit_scale * a @ b.T  # (N, M)
    same = (labels_a[:, None] == labels_b[None, :]).float()  # (N, M)
    a_to_b = F.cross_entropy(logits, same / same.sum(dim=1, keepdim=True))
    b_to_a = F.cross_entropy(logits.T, same.T / same.T.sum(dim=1, keepdim=True))
    return (a_to_b + b_to_a) / 2
