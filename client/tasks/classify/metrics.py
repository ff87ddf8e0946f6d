"""Classification metrics: top-k accuracy (OpenCLIP's top1/top5) and accuracy per class.

A prediction is right at k when fewer than k classes score strictly higher than the true class:
a tie with the true class does not count against it, whatever the order of the classes (as the
retrieval ranks in tasks/retrieval/metrics.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, C) scores, (N,) labels -> (N,) 0-based rank of the true class."""
    true = logits.gather(1, labels[:, None])  # (N, 1)
    return (logits > true).sum(dim=1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> dict[str, object]:
    """top1, top5 (top-k with k clamped to the classes), and per_class_accuracy {name: acc}
    for the classes that have images (a class without any has no accuracy)."""
    logits, labels = logits.detach().float().cpu(), labels.cpu()
    if logits.ndim != 2 or logits.shape != (len(labels), len(classnames)):
        raise ValueError(f"logits must be (N, C) = ({len(labels)}, {len(classnames)}), got {tuple(logits.shape)}")
    if len(labels) == 0:
        raise ValueError("no images to score")
    rank = true_class_rank(logits, labels)
    correct = (rank == 0).float()
    per_class = {name: correct[labels == c].mean().item() for c, name in enumerate(classnames) if (labels == c).any()}
    return {"top1": correct.mean().item(), "top5": (rank < 5).float().mean().item(), "per_class_accuracy": per_class}
