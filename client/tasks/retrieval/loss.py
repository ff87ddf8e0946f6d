"""CLIP's symmetric contrastive loss for image-caption batches in which captions may repeat."""

from __future__ import annotations

import torch

from graytune.client.modules.losses import category_contrastive_loss


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, caption_index: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over B images and the U distinct captions of the batch.

    image_emb (B, E) and text_emb (U, E) are unit vectors; caption_index (B,) names each image's
    caption. Image -> text is cross-entropy over the U captions; text -> image spreads each
    caption's target evenly over its images. With distinct captions (U == B, caption_index ==
    arange(B)) this is exactly CLIP's loss.
    """
    distinct = torch.arange(text_emb.shape[0], device=caption_index.device)  # (U,)
    return category_contrastive_loss(image_emb, text_emb, caption_index, distinct, logit_scale)
