"""Video-caption data sets: OpenCLIP's CSV convention with a video file or frame folder per row."""

from __future__ import annotations

import os

import torch

from graytune.client.data.image_files import check_images
from graytune.client.data.preprocess import Preprocess
from graytune.client.tasks.retrieval.data import collate, read_rows
from graytune.client.tasks.video.frames import read_clip


class VideoCaptionDataset(torch.utils.data.Dataset):
    """Items are (frames (T, 3, H, W) float32, caption); clips are decoded lazily."""

    def __init__(
        self,
        path: str,
        preprocess: Preprocess,
        frames: int = 8,
        img_key: str = "filepath",
        caption_key: str = "title",
        separator: str = "\t",
    ):
        if frames < 1:
            raise ValueError(f"--frames must be at least 1, got {frames}")
        self.path, self.preprocess, self.frames = path, preprocess, frames
        self.rows = read_rows(path, img_key, caption_key, separator)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        line, clip, caption = self.rows[index]
        images = read_clip(clip, self.frames, f"{self.path}, line {line}")
        return torch.stack([self.preprocess(image) for image in images]), caption

    @property
    def captions(self) -> list:
        return [caption for _, _, caption in self.rows]

    def batch(self, indices) -> tuple[torch.Tensor, list]:
        """-> (clips (B, T, 3, H, W), B captions)."""
        return collate([self[i] for i in indices])

    def check(self, decode: int = 4, seed: int = 0, skip_unreadable: bool = False) -> str:
        """Before any call is billed: every clip exists and `decode` of them decode to N frames."""
        found = check_images(
            [(f"{self.path}, line {line}", clip) for line, clip, _ in self.rows],
            self.__getitem__,
            decode,
            seed,
            exists=os.path.exists,
            what="video file or frame folder",
            skip_unreadable=skip_unreadable,
        )
        return (
            f"{self.path}: {len(self):,} clips of {self.frames} frames, {len(set(self.captions)):,} "
            f"distinct captions, {found}"
        )
