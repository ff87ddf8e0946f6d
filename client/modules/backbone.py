"""The backbone alone (zero-shot), and a video through an image encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from graytune.client.modules.layers import LogitScale, MeanPooling
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower, RemoteTextTower


def encode_video(
    encode_image: Callable[[torch.Tensor], torch.Tensor], pool: nn.Module, frames: torch.Tensor
) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, E): every frame encoded in one call, pooled over time, normalised."""
    per_frame = encode_image(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])  # (B, T, E)
    return F.normalize(pool(per_frame), dim=-1)


class ZeroShotCLIP(nn.Module):
    """The backbone alone: normalised embeddings of pixels and captions, nothing else sent."""

    def __init__(self, oracle: OracleClient, cache: EmbeddingCache | None = None):
        super().__init__()
        self.image_tower = RemoteImageTower(oracle, cache)
        self.text_tower = RemoteTextTower(oracle, cache)
        self.logit_scale = LogitScale().requires_grad_(False)  # 1/0.07: rankings do not depend on it

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, E) unit vectors."""
        return F.normalize(self.image_tower(pixels), dim=-1)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) clips -> (B, E) unit vectors: the mean of the frames' embeddings."""
        return encode_video(self.encode_image, MeanPooling(), frames)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """N captions -> (N, E) unit vectors."""
        return F.normalize(self.text_tower(captions), dim=-1)
