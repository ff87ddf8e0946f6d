"""Image–text retrieval metrics under OpenCLIP's names, with caption equality as ground truth.

Image i and text j match iff their captions are equal. With one distinct caption per image-text pair this is
exactly OpenCLIP's get_clip_metrics; with a deduplicated caption gallery (see unique_captions) many images
share one text, which is zero-shot classification scored as retrieval.

A query's rank is the number of gallery items scored strictly higher than its best-scored positive (0-based),
so an item tying with that positive does not count against it, whatever the order of the gallery.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def unique_captions(captions: Sequence[str]) -> list[str]:
    """Distinct captions in first-seen order."""
    return list(dict.fromkeys(captions))


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    image_captions: list[str],
    text_captions: list[str],
    visual: str = "image",
) -> dict[str, float]:
    """image_to_text_* and text_to_image_* mean_rank, median_rank (1-based) and R@1, R@5, R@10
    (`visual="video"`: video_to_text_*, text_to_video_*).

    image_emb (N, E) and text_emb (M, E) need not be normalised. Every image needs a text with its caption
    and every text an image with its caption.
    """
    image_emb, text_emb = torch.as_tensor(image_emb), torch.as_tensor(text_emb)
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb and text_emb must be (N, E) and (M, E), "
            f"got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if len(image_captions) != len(image_emb) or len(text_captions) != len(text_emb):
        raise ValueError(
            f"need one caption per embedding: {len(image_captions)} image captions for {len(image_emb)} images, "
            f"{len(text_captions)} text captions for {len(text_emb)} texts"
        )
    if len(image_emb) == 0 or len(text_emb) == 0:
        raise ValueError(f"need at least one image and one text, got {len(image_emb)} and {len(text_emb)}")

    image_emb = F.normalize(image_emb.detach().float().cpu(), dim=-1)
    text_emb = F.normalize(text_emb.detach().float().cpu(), dim=-1)
    similarity = image_emb @ text_emb.T  # (N, M)
    caption_ids = {caption: i for i, caption in enumerate(unique_captions([*image_captions, *text_captions]))}
    image_ids = torch.tensor([caption_ids[c] for c in image_captions])  # (N,)
    text_ids = torch.tensor([caption_ids[c] for c in text_captions])  # (M,)
    positives = image_ids[:, None] == text_ids[None, :]  # (N, M)

    metrics = {}
    for name, scores, is_positive, query_captions in (
        (f"{visual}_to_text", similarity, positives, image_captions),
        (f"text_to_{visual}", similarity.T, positives.T, text_captions),
    ):
        ranks = _ranks(scores, is_positive, query_captions, name)
        metrics[f"{name}_mean_rank"] = float(ranks.mean() + 1)
        metrics[f"{name}_median_rank"] = float(np.floor(np.median(ranks)) + 1)
        for k in (1, 5, 10):
            metrics[f"{name}_R@{k}"] = float(np.mean(ranks < k))
    return metrics


def _ranks(scores: torch.Tensor, is_positive: torch.Tensor, query_captions: list[str], name: str) -> np.ndarray:
    """0-based rank of each query's best positive: (Q, G) scores and positives -> (Q,)."""
    without_positive = (~is_positive.any(dim=1)).nonzero().flatten()
    if len(without_positive):
        q = int(without_positive[0])
        raise ValueError(
            f"{name}: query {q} (caption {query_captions[q]!r}) has no match in the gallery; "
            f"{len(without_positive)} queries have none"
        )
    best_positive = scores.masked_fill(~is_positive, -torch.inf).amax(dim=1)  # (Q,)
    return (scores > best_positive[:, None]).sum(dim=1).numpy()
