"""The deployed CraFT classifier: a context z found by the search, the refinement MLP, and the
seed of the fixed projection A. A few kilobytes beside the owner's backbone.

    context  = A·z             (N, W): added on the server to the template's N token embeddings
    classes  = oracle(context) (C, E): "<template> <class name>." under that context
    logits   = s · img @ classes.T,   refined = logits + MLP(logits)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from graytune.client.data.batches import chunks
from graytune.client.data.text import prompt_name
from graytune.client.methods.base import AdapterConfig
from graytune.client.transport.access import CRAFT, Need
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower


@dataclass(frozen=True, kw_only=True)
class CraftConfig(AdapterConfig):
    """The prompt: the server's `template` with its `context_tokens` moved by A·z (A: seeded,
    (intrinsic_dim, context_tokens × token_width), std `projection_std`); the refinement MLP's
    `hidden` width; the prompt's logits scaled by `logit_scale` (CLIP's learned one)."""

    template: str
    context_tokens: int
    intrinsic_dim: int
    projection_seed: int
    projection_std: float
    hidden: int = 256
    logit_scale: float = 100.0

    classifies = True

    def need(self, training: bool) -> Need:
        return CRAFT  # Embed only, any tier


def projection(seed: int, dim: int, tokens: int, width: int, std: float) -> torch.Tensor:
    """A: (d, N*W), fixed by its seed (regenerated, never saved)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, tokens * width, generator=generator) * std


class RefinementMLP(nn.Module):
    """logits + MLP(logits): Linear(C, 256) -> ReLU -> Linear(256, C); the last layer starts at
    zero, so refinement starts as the identity."""

    def __init__(self, classes: int, hidden: int):
        super().__init__()
        first, last = nn.Linear(classes, hidden), nn.Linear(hidden, classes)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(first, nn.ReLU(), last)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)"""
        return logits + self.net(logits)


class CraftClassifier(nn.Module):
    """The weights are `z` and the MLP; the rest is CraftConfig's."""

    z: torch.Tensor  # (d,) buffers, registered in __init__
    projection: torch.Tensor  # (d, N*W)

    def __init__(self, config: CraftConfig, oracle: OracleClient, cache: EmbeddingCache | None = None):
        super().__init__()
        if config.classes < 1 or not config.task.get("classnames"):
            raise ValueError("a CraFT classifier needs its class names (CraftConfig.task)")
        self.config, self.oracle = config, oracle
        self.template, self.tokens, self.scale = config.template, config.context_tokens, config.logit_scale
        self.classnames: list[str] = [prompt_name(name) for name in config.task["classnames"]]
        self.register_buffer("z", torch.zeros(config.intrinsic_dim))
        self.register_buffer(
            "projection",
            projection(
                config.projection_seed, config.intrinsic_dim, self.tokens, config.token_width, config.projection_std
            ),
            persistent=False,
        )
        self.refine = RefinementMLP(config.classes, config.hidden)
        self.image_tower = RemoteImageTower(oracle, cache)
        self._classes: torch.Tensor | None = None  # (C, E) of the current z
        self.candidates_per_call()  # refuses more classes than one call can embed, before any is billed

    def contexts(self, z: torch.Tensor) -> torch.Tensor:
        """(P, d) -> (P, N, W) context deltas."""
        return (z @ self.projection).view(z.shape[0], self.tokens, -1)

    def candidates_per_call(self) -> int:
        """How many candidates' prompts fit in one call of the server's max_context_rows."""
        rows, classes = self.oracle.info().limits.max_context_rows, len(self.classnames)
        if classes > rows:
            raise ValueError(
                f"{classes} classes: the server embeds at most {rows} prompts per call "
                f"(max_context_rows); ask its owner for more"
            )
        return rows // classes

    def class_embeddings_of(self, z: torch.Tensor) -> torch.Tensor:
        """(P, d) candidates -> (P, C, E) unit class embeddings (P queries), in one oracle call
        when P × C fits the server's max_context_rows, else in as few as fit."""
        contexts = self.contexts(z)  # (P, N, W)
        per_call = self.candidates_per_call()
        embedded = [
            self.oracle.embed_contexts(self.template, self.classnames, some) for some in chunks(contexts, per_call)
        ]
        return F.normalize(torch.cat(embedded), dim=-1)

    def use(self, z: torch.Tensor, classes: torch.Tensor | None = None) -> None:
        """Makes z (d,) the model's context; `classes` (C, E): its class embeddings, if known."""
        self.z.copy_(z)
        self._classes = classes

    def class_embeddings(self) -> torch.Tensor:
        if self._classes is None:
            self._classes = self.class_embeddings_of(self.z[None])[0]
        return self._classes

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, E) unit vectors of the backbone."""
        return F.normalize(self.image_tower(pixels), dim=-1)

    def prompt_logits(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, E) unit images, (..., C, E) unit classes -> (..., B, C) the prompt's logits."""
        return self.scale * images @ classes.transpose(-1, -2)

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) refined logits."""
        return self.refine(self.prompt_logits(self.encode_image(pixels), self.class_embeddings()))

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        self._classes = None  # a new z
        return super().load_state_dict(state, strict, assign)
