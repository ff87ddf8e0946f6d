"""Text-image retrieval around the shared loop: its data sets, its step loss, its evaluation.

A step: the batch's images against its distinct captions, CLIP's contrastive loss (captions
may repeat). Evaluation: OpenCLIP's retrieval metrics against the data set's distinct captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from graytune.client.data.batches import chunks, in_order
from graytune.client.data.preprocess import preprocess_for
from graytune.client.methods.base import Model
from graytune.client.tasks.base import Task
from graytune.client.tasks.retrieval.data import ImageCaptionDataset
from graytune.client.tasks.retrieval.loss import contrastive_loss
from graytune.client.tasks.retrieval.metrics import retrieval_metrics, unique_captions
from graytune.client.transport.concurrent import concurrently
from graytune.client.transport.oracle_client import OracleClient


def load_dataset(
    path: str, oracle: OracleClient, img_key: str = "filepath", caption_key: str = "title", separator: str = "\t"
) -> ImageCaptionDataset:
    return ImageCaptionDataset(
        path, preprocess_for(oracle), img_key=img_key, caption_key=caption_key, separator=separator
    )


def contrastive_step_loss(
    model: Model, pixels: torch.Tensor, captions: Sequence[str], visual: str = "image"
) -> torch.Tensor:
    """(B, 3, H, W) pixels (visual="video": (B, T, 3, H, W) clips) and their B captions -> the
    batch's contrastive loss."""
    gallery = unique_captions(captions)
    index = torch.tensor([gallery.index(c) for c in captions])  # (B,)
    images, texts = concurrently(lambda: getattr(model, f"encode_{visual}")(pixels), lambda: model.encode_text(gallery))
    return contrastive_loss(images, texts, index, model.logit_scale())


@torch.no_grad()
def evaluate(model: Model, dataset, batch_size: int = 64, visual: str = "image") -> dict[str, float]:
    """OpenCLIP's retrieval metrics; the text gallery is the data set's distinct captions.
    `dataset` items are (pixels or clip, caption); `visual` names the encoder and the metrics."""
    encode = getattr(model, f"encode_{visual}")
    captions = dataset.captions
    gallery = unique_captions(captions)
    images, texts = concurrently(
        lambda: [encode(batch[0]) for batch in in_order(dataset, batch_size)],
        lambda: [model.encode_text(texts) for texts in chunks(gallery, batch_size)],
    )
    return retrieval_metrics(torch.cat(images), torch.cat(texts), captions, gallery, visual)


class RetrievalTask(Task):
    """Text-image retrieval on image-caption files (OpenCLIP's CSV convention)."""

    name = "retrieval"
    headline = ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5")

    def load(self, train_path: str | None, val_path: str | None, seed: int, skip_unreadable: bool = False):
        fmt = self.csv("img_key", "caption_key", "separator")
        return self.checked(
            lambda path: load_dataset(path, self.oracle, **fmt), train_path, val_path, seed, skip_unreadable
        )

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        return contrastive_step_loss(model, *batch)

    def evaluate(self, model: torch.nn.Module, dataset: ImageCaptionDataset, batch_size: int) -> dict[str, float]:
        return evaluate(model, dataset, batch_size)
