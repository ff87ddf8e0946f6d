"""CLIP's linear probe: a linear classifier on the oracle's frozen image embeddings.

Nothing learns before the backbone, so no gradient is asked for and a `blackbox` key may train
it; the training set's embeddings are fetched once (EmbeddingCache). The classifier starts as
the zero-shot classifier (rows: the class prompts' embeddings, scaled as CLIP's logits), so
step 0 is zero-shot and training moves from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from graytune.client.methods.base import AdapterConfig
from graytune.client.modules.layers import LogitScale
from graytune.client.transport.access import BACKBONE_INPUTS, Need
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower, RemoteTextTower


@dataclass(frozen=True, kw_only=True)
class LinearProbeConfig(AdapterConfig):
    classifies = True

    def need(self, training: bool) -> Need:
        return Need(BACKBONE_INPUTS, gradients=False)  # nothing learns before the backbone


class LinearProbe(nn.Module):
    def __init__(self, config: LinearProbeConfig, oracle: OracleClient, cache: EmbeddingCache | None = None):
        super().__init__()
        if config.classes < 1:
            raise ValueError("a linear probe needs the number of classes (LinearProbeConfig.classes)")
        self.config = config
        self.image_tower = RemoteImageTower(oracle, cache)
        self.text_tower = RemoteTextTower(oracle, cache)
        self.classifier = nn.Linear(config.embed_dim, config.classes)

    @torch.no_grad()
    def init_zero_shot(self, class_embeddings: torch.Tensor) -> None:
        """(C, E) unit class embeddings -> weights that give CLIP's zero-shot logits."""
        self.classifier.weight.copy_(LogitScale()() * class_embeddings)
        self.classifier.bias.zero_()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, E) unit vectors of the backbone."""
        return F.normalize(self.image_tower(pixels), dim=-1)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """N captions -> (N, E) unit vectors of the backbone (the probe has no text side)."""
        return F.normalize(self.text_tower(captions), dim=-1)

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) logits."""
        return self.classifier(self.encode_image(pixels))
