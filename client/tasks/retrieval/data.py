"""Image–caption data sets in OpenCLIP's CSV convention.

A data set is a .csv/.tsv file (header row, one image path and one caption per row) or a .jsonl file
(one JSON object per line). Relative image paths resolve against the folder of the data set file.
"""

from __future__ import annotations

import os

import torch

from graytune.client.data.image_files import check_images
from graytune.client.data.preprocess import Preprocess, load_image
from graytune.client.data.tables import DataError, field, read_table


def read_pairs(
    path: str | os.PathLike, img_key: str = "filepath", caption_key: str = "title", separator: str = "\t"
) -> list[tuple[str, str]]:
    """(image path, caption) pairs from a .csv/.tsv file (header row, `separator`) or a .jsonl file."""
    return [(image, caption) for _, image, caption in read_rows(path, img_key, caption_key, separator)]


def read_rows(
    path: str | os.PathLike, img_key: str = "filepath", caption_key: str = "title", separator: str = "\t"
) -> list[tuple[int, str, str]]:
    """(line number, image path, caption) of each row; image paths resolved against the file's folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    found = []
    for line, row in read_table(path, separator):
        image, caption = (field(row, key, path, line) for key in (img_key, caption_key))
        found.append((line, os.path.join(folder, image), caption))
    if not found:
        raise DataError(f"{path}: no image-caption pairs")
    return found


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Items are (pixels (3, H, W) float32, caption); images are loaded lazily, and one that
    cannot be read fails with the data set file and line that named it."""

    def __init__(
        self,
        path: str | os.PathLike,
        preprocess: Preprocess,
        img_key: str = "filepath",
        caption_key: str = "title",
        separator: str = "\t",
    ):
        self.path = os.fspath(path)
        self.rows = read_rows(path, img_key, caption_key, separator)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        line, image_path, caption = self.rows[index]
        return load_image(image_path, self.preprocess, f"{self.path}, line {line}"), caption

    @property
    def captions(self) -> list[str]:
        return [caption for _, _, caption in self.rows]

    def batch(self, indices) -> tuple[torch.Tensor, list[str]]:
        """-> (pixels (B, 3, H, W), B captions)."""
        return collate([self[i] for i in indices])

    def check(self, decode: int = 16, seed: int = 0, skip_unreadable: bool = False) -> str:
        """Before any call is billed: every image exists and `decode` of them (the first and a
        seeded sample) decode. -> a one-line summary; DataError naming file and line if not."""
        found = check_images(
            [(f"{self.path}, line {line}", image) for line, image, _ in self.rows],
            self.__getitem__,
            decode,
            seed,
            skip_unreadable=skip_unreadable,
        )
        return f"{self.path}: {len(self):,} pairs, {len(set(self.captions)):,} distinct captions, {found}"


def collate(batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    """DataLoader collate_fn: -> (pixels (B, 3, H, W), captions)."""
    pixels, captions = zip(*batch)
    return torch.stack(pixels), list(captions)
