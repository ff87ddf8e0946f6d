"""Few-shot classification (CoOp's setting) around the shared loop.

Class prompts are the templates filled with each class name; a class's embedding is the mean of
its templates' unit embeddings, normalised again. A step sends every class prompt through the
text tower in one call and the batch's images through the image tower; the loss is
cross-entropy over CLIP's scaled cosine logits, so the input and output adapters of both towers
learn. A linear probe scores the frozen image embeddings with its own classifier instead.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from graytune.client.data.batches import in_order
from graytune.client.data.preprocess import preprocess_for
from graytune.client.data.tables import CsvFormat
from graytune.client.data.text import prompt_name
from graytune.client.methods.base import AdapterConfig, Model
from graytune.client.methods.linear_probe.model import LinearProbe
from graytune.client.options import option
from graytune.client.tasks.base import Metrics, Task
from graytune.client.tasks.classify.data import (
    DEFAULT_TEMPLATES,
    LabeledImageDataset,
    few_shot_split,
    read_classnames,
    read_labeled,
    read_templates,
)
from graytune.client.tasks.classify.metrics import classification_metrics
from graytune.client.transport.concurrent import concurrently
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient


def classifies_itself(model: nn.Module) -> bool:
    """A linear probe or CraFT: logits of its own, not CLIP's cosine logits with the prompts."""
    return hasattr(model, "classify")


@dataclasses.dataclass(frozen=True)
class ClassifyOptions:
    shots: int = option(16, "training images drawn per class (0: all); without --val-data the rest are evaluated")
    templates: str | None = option(
        None,
        "prompt templates, one per line with {} for the class name; a "
        "class's embedding is their mean (default: 'a photo of a {}.')",
    )
    classnames: str | None = option(
        None, "class names, one per line, line i naming class i (default: the class folders' or labels' names, sorted)"
    )

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ValueError(f"--shots must be 0 (all images) or more, got {self.shots}")


class ClassifyTask(Task):
    name = "classify"
    methods = ("dga", "lga", "linear-probe", "craft")
    headline = ("top1", "top5")
    Options = ClassifyOptions

    def __init__(
        self, oracle: OracleClient, csv_format: CsvFormat | None = None, options: ClassifyOptions | None = None
    ):
        super().__init__(oracle, csv_format, options)
        self.shots = self.options.shots
        templates, classnames = self.options.templates, self.options.classnames
        self.templates: list[str] = read_templates(templates) if templates else list(DEFAULT_TEMPLATES)
        self.classnames: list[str] | None = read_classnames(classnames) if classnames else None

    def restore(self, saved: dict) -> None:
        self.classnames, self.templates = saved["classnames"], saved["templates"]

    def saved_with_adapters(self) -> dict:
        return {"name": self.name, "classnames": self.classnames, "templates": self.templates}

    def adapter_config(self, config: AdapterConfig) -> AdapterConfig:
        config = super().adapter_config(config)
        if not config.classifies:
            return config
        assert self.classnames is not None  # `load` read them
        return dataclasses.replace(config, classes=len(self.classnames))

    def read(self, path: str) -> tuple[list, list[str]]:
        return read_labeled(path, self.classnames, **self.csv("img_key", "label_key", "separator"))

    def load(self, train_path: str | None, val_path: str | None, seed: int, skip_unreadable: bool = False):
        """K shots per class from `train_path`; evaluation on `val_path`, else on the rest."""
        preprocess = preprocess_for(self.oracle)
        train = val = None
        if train_path:
            images, self.classnames = self.read(train_path)
            chosen, rest = (
                few_shot_split(images, self.classnames, self.shots, seed, train_path) if self.shots else (images, [])
            )
            train = LabeledImageDataset(
                f"{train_path} ({self.shots or 'all'} shots)", chosen, self.classnames, preprocess
            )
            if not val_path and rest:
                val = LabeledImageDataset(
                    f"{train_path} (the images not drawn as shots)", rest, self.classnames, preprocess
                )
        if val_path:
            images, self.classnames = self.read(val_path)
            val = LabeledImageDataset(val_path, images, self.classnames, preprocess)
        self.log_checks(train, val, seed, skip_unreadable)
        return train, val

    def build_model(self, config: AdapterConfig, cache: EmbeddingCache | None = None) -> nn.Module:
        model = super().build_model(config, cache)
        if isinstance(model, LinearProbe):
            with torch.no_grad():
                model.init_zero_shot(self.class_embeddings(model))
        return model

    def prompts(self) -> list[str]:
        """C × T prompts, class-major."""
        assert self.classnames is not None  # `load` or `restore` set them
        return [t.format(prompt_name(c)) for c in self.classnames for t in self.templates]

    def class_embeddings(self, model: Model) -> torch.Tensor:
        """-> (C, E) unit vectors: each class's templates, embedded in one call and averaged."""
        assert self.classnames is not None  # `load` or `restore` set them
        per_prompt = model.encode_text(self.prompts())  # (C*T, E), unit rows
        return F.normalize(per_prompt.view(len(self.classnames), len(self.templates), -1).mean(dim=1), dim=-1)

    def logits(self, model: Model, pixels: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) scores; `classes` (C, E) saves embedding the prompts again."""
        if classifies_itself(model):
            return model.classify(pixels)
        if classes is None:
            images, classes = concurrently(lambda: model.encode_image(pixels), lambda: self.class_embeddings(model))
        else:
            images = model.encode_image(pixels)
        return model.logit_scale() * images @ classes.T

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        pixels, labels = batch
        return F.cross_entropy(self.logits(model, pixels), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: LabeledImageDataset, batch_size: int) -> Metrics:
        """top1, top5 and per_class_accuracy; the class prompts are embedded once."""
        classes = None if classifies_itself(model) else self.class_embeddings(model)
        logits = [self.logits(model, pixels, classes) for pixels, _ in in_order(dataset, batch_size)]
        assert self.classnames is not None  # `load` or `restore` set them
        return classification_metrics(torch.cat(logits), dataset.labels, self.classnames)
