"""CLIP's symmetric contrastive loss, for batches in which captions may repeat."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_index: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over B images and the U distinct captions of the batch.

    image_emb (B, E) and text_emb (U, E) are unit vectors; caption_index (B,) names each image's
    caption. Image -> text is cross-entropy over the U captions; text -> image spreads each
    caption's target evenly over its images. With distinct captions (U == B, caption_index ==
    arange(B)) this is exactly CLIP's loss.
    """
    logits = logit_scale * image_emb @ text_emb.T  # (B, U)
    image_to_text = F.cross_entropy(logits, caption_index)
    positives = F.one_hot(caption_index, text_emb.shape[0]).T.float()  # (U, B)
    targets = positives / positives.sum(dim=1, keepdim=True)
    text_to_image = F.cross_entropy(logits.T, targets)
    return (image_to_text + text_to_image) / 2
