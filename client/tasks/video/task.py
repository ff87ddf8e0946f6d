"""Text-video retrieval around the shared loop.

A clip's N frames go through the image tower with the batch's other clips in one call, are
pooled over time on the client (mean, or a learned attention pooling saved with the adapters),
and meet the captions in CLIP's contrastive loss, as text-image retrieval does.
"""

from __future__ import annotations

import dataclasses

import torch

from graytune.client.data.preprocess import preprocess_for
from graytune.client.data.tables import CsvFormat
from graytune.client.methods.base import AdapterConfig
from graytune.client.modules.layers import POOLING
from graytune.client.options import option
from graytune.client.tasks.base import Task
from graytune.client.tasks.retrieval.task import contrastive_step_loss, evaluate
from graytune.client.tasks.video.data import VideoCaptionDataset
from graytune.client.transport.oracle_client import OracleClient


@dataclasses.dataclass(frozen=True)
class VideoOptions:
    frames: int = option(8, "frames per clip, sampled uniformly")
    pooling: str = option(
        "mean",
        "how frame embeddings become a clip's; attention learns a query, saved with the adapters",
        choices=tuple(POOLING),
    )

    def __post_init__(self) -> None:
        if self.pooling not in POOLING:
            raise ValueError(f"--pooling must be one of {', '.join(POOLING)}, not {self.pooling!r}")


class VideoTask(Task):
    name = "video"
    headline = ("video_to_text_R@1", "video_to_text_R@5", "text_to_video_R@1", "text_to_video_R@5")
    Options = VideoOptions

    def __init__(self, oracle: OracleClient, csv_format: CsvFormat | None = None, options: VideoOptions | None = None):
        super().__init__(oracle, csv_format, options)
        self.frames, self.pooling = self.options.frames, self.options.pooling

    def load(self, train_path: str | None, val_path: str | None, seed: int, skip_unreadable: bool = False):
        preprocess, fmt = preprocess_for(self.oracle), self.csv("img_key", "caption_key", "separator")
        return self.checked(
            lambda path: VideoCaptionDataset(path, preprocess, self.frames, **fmt),
            train_path,
            val_path,
            seed,
            skip_unreadable,
        )

    def saved_with_adapters(self) -> dict:
        return {"name": self.name, "frames": self.frames}

    def restore(self, saved: dict) -> None:
        self.frames = saved["frames"]

    def adapter_config(self, config: AdapterConfig) -> AdapterConfig:
        return dataclasses.replace(super().adapter_config(config), temporal_pooling=self.pooling)

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        clips, captions = batch
        return contrastive_step_loss(model, clips, captions, visual="video")

    def evaluate(self, model: torch.nn.Module, dataset: VideoCaptionDataset, batch_size: int) -> dict[str, float]:
        """`batch_size` clips per call, fewer where their frames would pass the server's max_batch
        (`graytune eval`'s 64 clips of 8 frames are 512 images; a default server takes 256)."""
        clips = max(1, min(batch_size, self.oracle.info().limits.max_batch // self.frames))
        return evaluate(model, dataset, clips, visual="video")
