"""Sketch-image retrieval (category level) around the shared loop.

A step pairs each of the batch's sketches with a photo of its category; both domains go
through the image tower in one call, each through its own adapters, and the loss is contrastive
over the batch's categories. Evaluation ranks the val photos for every val sketch: mAP@all and
P@K, sketch -> photo.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from graytune.client.adapters.cross_domain import CrossDomainCLIP
from graytune.client.adapters.graybox import AdapterConfig
from graytune.client.data.preprocess import preprocess_for
from graytune.client.tasks.base import Metrics, Task
from graytune.client.tasks.sketch.data import DOMAINS, SketchPhotoDataset
from graytune.client.tasks.sketch.loss import category_contrastive_loss
from graytune.client.tasks.sketch.metrics import sketch_metrics
from graytune.client.transport.oracle_client import OracleClient


def encode(model: nn.Module, pixels: torch.Tensor, domain: str) -> torch.Tensor:
    """(B, 3, H, W) -> (B, E): the domain's adapters, or the backbone alone (zero-shot)."""
    return model.encode_image(pixels, domain) if isinstance(model, CrossDomainCLIP) else model.encode_image(pixels)


class SketchTask(Task):
    name = "sketch"

    def __init__(self, oracle: OracleClient, csv_format: Optional[dict] = None, precision_at: int = 100):
        """`precision_at`: K of P@K, clamped to the gallery size."""
        super().__init__(oracle, csv_format)
        if precision_at < 1:
            raise ValueError(f"--precision-at must be at least 1, got {precision_at}")
        self.precision_at = precision_at

    @property
    def headline(self):
        return ("sketch_to_photo_mAP@all",)

    def load(self, train_path: Optional[str], val_path: Optional[str], seed: int):
        preprocess, fmt = preprocess_for(self.oracle), self.csv("img_key", "separator")
        return self.checked(lambda path: SketchPhotoDataset(path, preprocess, seed=seed, **fmt),
                            train_path, val_path, seed)

    def adapter_config(self, config: AdapterConfig) -> AdapterConfig:
        return dataclasses.replace(super().adapter_config(config), domains=DOMAINS)

    def loss(self, model: CrossDomainCLIP, batch) -> torch.Tensor:
        sketches, labels, photos, photo_labels = batch
        embedded = model.encode_domains({"sketch": sketches, "photo": photos})
        return category_contrastive_loss(embedded["sketch"], embedded["photo"], labels, photo_labels,
                                         model.logit_scale())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: SketchPhotoDataset, batch_size: int) -> Metrics:
        def embed(count, item, domain):
            return torch.cat([encode(model, torch.stack([item(i)[0] for i in range(s, min(s + batch_size, count))]),
                                     domain) for s in range(0, count, batch_size)])
        sketches = embed(len(dataset.sketches), dataset.__getitem__, "sketch")
        photos = embed(len(dataset.photos), dataset.photo, "photo")
        return sketch_metrics(sketches, photos, dataset.sketch_labels(), dataset.photo_labels(), self.precision_at)
