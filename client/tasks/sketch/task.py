"""Sketch-image retrieval (category level) around the shared loop.

A step pairs each of the batch's sketches with a photo of its category; both domains go
through the image tower in one call, each through its own adapters, and the loss is contrastive
over the batch's categories. Evaluation ranks the val photos for every val sketch: mAP@all and
P@K, sketch -> photo.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from graytune.client.data.batches import chunks
from graytune.client.data.preprocess import preprocess_for
from graytune.client.data.tables import CsvFormat
from graytune.client.methods.base import AdapterConfig, Model
from graytune.client.methods.graybox.cross_domain import CrossDomainCLIP
from graytune.client.modules.losses import category_contrastive_loss
from graytune.client.options import option
from graytune.client.tasks.base import Metrics, Task
from graytune.client.tasks.sketch.data import DOMAINS, SketchPhotoDataset
from graytune.client.tasks.sketch.metrics import sketch_metrics
from graytune.client.transport.oracle_client import OracleClient


def encode(model: Model, pixels: torch.Tensor, domain: str) -> torch.Tensor:
    """(B, 3, H, W) -> (B, E): the domain's adapters, or the backbone alone (zero-shot)."""
    return model.encode_image(pixels, domain) if isinstance(model, CrossDomainCLIP) else model.encode_image(pixels)


@dataclasses.dataclass(frozen=True)
class SketchOptions:
    precision_at: int = option(100, "K of P@K, clamped to the gallery size")

    def __post_init__(self) -> None:
        if self.precision_at < 1:
            raise ValueError(f"--precision-at must be at least 1, got {self.precision_at}")


class SketchTask(Task):
    name = "sketch"
    Options = SketchOptions

    def __init__(self, oracle: OracleClient, csv_format: CsvFormat | None = None, options: SketchOptions | None = None):
        super().__init__(oracle, csv_format, options)
        self.precision_at = self.options.precision_at

    headline = ("sketch_to_photo_mAP@all",)
    plotted = ("sketch_to_photo_mAP@all", "sketch_to_photo_P@")

    def load(self, train_path: str | None, val_path: str | None, seed: int, skip_unreadable: bool = False):
        preprocess, fmt = preprocess_for(self.oracle), self.csv("img_key", "separator")
        return self.checked(
            lambda path: SketchPhotoDataset(path, preprocess, seed=seed, **fmt),
            train_path,
            val_path,
            seed,
            skip_unreadable,
        )

    def adapter_config(self, config: AdapterConfig) -> AdapterConfig:
        return dataclasses.replace(super().adapter_config(config), domains=DOMAINS)

    def loss(self, model: CrossDomainCLIP, batch) -> torch.Tensor:
        sketches, labels, photos, photo_labels = batch
        embedded = model.encode_domains({"sketch": sketches, "photo": photos})
        return category_contrastive_loss(
            embedded["sketch"], embedded["photo"], labels, photo_labels, model.logit_scale()
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: SketchPhotoDataset, batch_size: int) -> Metrics:
        def embed(count, item, domain):
            return torch.cat(
                [
                    encode(model, torch.stack([item(i)[0] for i in rows]), domain)
                    for rows in chunks(range(count), batch_size)
                ]
            )

        sketches = embed(len(dataset.sketches), dataset.__getitem__, "sketch")
        photos = embed(len(dataset.photos), dataset.photo, "photo")
        return sketch_metrics(sketches, photos, dataset.sketch_labels(), dataset.photo_labels(), self.precision_at)
