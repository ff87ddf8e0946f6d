"""Trained adapters loaded for use, like an OpenCLIP model in downstream code.

    model = load_model("runs/digits/adapter", oracle)
    model.encode_image(pixels)       # (B, E) unit vectors, through the gradient-free Embed call
    model.encode_text(["a cat"])
    model.classify(pixels)           # classification adapters: (B, C) class probabilities

The weights are frozen, so every call is an Embed: any tier that may send the adapters' inputs
can use them, and nothing is charged as a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from graytune.client.methods.base import Model
from graytune.client.methods.registry import load_adapters, read_config
from graytune.client.modules.backbone import ZeroShotCLIP
from graytune.client.tasks import make_task
from graytune.client.tasks.classify.task import ClassifyTask, classifies_itself
from graytune.client.transport import access
from graytune.client.transport.oracle_client import OracleClient


class Classifier(nn.Module):
    """A model and the classes it was trained to tell apart (class names and prompt templates)."""

    def __init__(self, model: Model, task: ClassifyTask):
        super().__init__()
        self.model, self.task = model, task
        self._classes: torch.Tensor | None = None  # (C, E), embedded on first use

    @property
    def classnames(self) -> list[str]:
        assert self.task.classnames is not None  # load_model: from the adapters, or required
        return self.task.classnames

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(captions)

    @torch.no_grad()
    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) class probabilities (softmax of the task's logits)."""
        if self._classes is None and not classifies_itself(self.model):
            self._classes = self.task.class_embeddings(self.model)
        return self.task.logits(self.model, pixels, self._classes).softmax(dim=-1)


def load_model(adapter: str | Path | None, oracle: OracleClient, classify_options: dict | None = None) -> Model:
    """Adapters from `adapter` (None: the backbone alone), frozen; classification adapters
    come as a Classifier. `classify_options` (templates, classnames files) make the backbone
    alone a zero-shot Classifier."""
    info = oracle.info()
    model: nn.Module
    if adapter is None:
        access.require(info, "zero-shot inference", access.ZERO_SHOT)
        model, saved = ZeroShotCLIP(oracle), None
    else:
        config = read_config(adapter)
        access.require(info, f"inference with {config.method} adapters", config.need(training=False))
        model, saved = load_adapters(adapter, oracle, config=config), config.task
    model.requires_grad_(False).eval()
    if saved and saved.get("name") == "classify":
        task = make_task("classify", oracle)
        task.restore(saved)
        return Classifier(model, task)
    if classify_options is not None:
        task = make_task("classify", oracle, options=classify_options)
        if task.classnames is None:
            raise ValueError("zero-shot classification needs the class names: --classnames FILE")
        return Classifier(model, task)
    return model
