"""Category-level retrieval metrics: mAP@all and P@K, sketch queries against a photo gallery.

A gallery item is relevant to a query when they share a category. Tied scores are scored as the
average over every order of the tied items (McSherry & Najork, ECIR 2008), so a result never
depends on how a sort happened to break a tie.
"""

from __future__ import annotations

import numpy as np
import torch


def _tie_groups(scores: np.ndarray, relevant: np.ndarray):
    """(items before, items, relevant items) of each group of equal scores, best first."""
    order = np.argsort(-scores, kind="stable")
    values, starts, sizes = np.unique(-scores[order], return_index=True, return_counts=True)
    hits = np.add.reduceat(relevant[order].astype(np.int64), starts)
    return starts, sizes, hits


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one query over the whole gallery: (G,) scores and (G,) booleans -> AP."""
    total = int(relevant.sum())
    if total == 0:
        raise ValueError("a query without a relevant gallery item has no average precision")
    summed, hits_before = 0.0, 0
    for start, size, hits in zip(*_tie_groups(scores, relevant)):
        if hits:
            positions = np.arange(start + 1, start + size + 1)  # 1-based positions of the group
            # At a position inside the group, an item is relevant with probability hits/size;
            # if it is, the group's items before it hold (k-1)(hits-1)/(size-1) relevant ones.
            before_in_group = (positions - start - 1) * ((hits - 1) / (size - 1) if size > 1 else 0.0)
            summed += hits / size * np.sum((hits_before + before_in_group + 1) / positions)
        hits_before += hits
    return summed / total


def precision_at(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """P@k of one query: the relevant share of the top k, a tie group across k counted pro rata."""
    found = 0.0
    for start, size, hits in zip(*_tie_groups(scores, relevant)):
        if start >= k:
            break
        found += hits * min(size, k - start) / size
    return found / k


def sketch_metrics(
    sketch_emb: torch.Tensor, photo_emb: torch.Tensor, sketch_labels: torch.Tensor, photo_labels: torch.Tensor, k: int
) -> dict[str, float]:
    """sketch_to_photo_mAP@all and sketch_to_photo_P@K (K clamped to the gallery size) of
    (Q, E) sketch and (G, E) photo embeddings (cosine similarity) and their category labels."""
    scores = (
        torch.nn.functional.normalize(sketch_emb.detach().float().cpu(), dim=-1)
        @ torch.nn.functional.normalize(photo_emb.detach().float().cpu(), dim=-1).T
    ).numpy()  # (Q, G)
    relevant = (sketch_labels.cpu()[:, None] == photo_labels.cpu()[None, :]).numpy()  # (Q, G)
    k = min(k, scores.shape[1])
    return {
        "sketch_to_photo_mAP@all": float(np.mean([average_precision(s, r) for s, r in zip(scores, relevant)])),
        f"sketch_to_photo_P@{k}": float(np.mean([precision_at(s, r, k) for s, r in zip(scores, relevant)])),
    }
