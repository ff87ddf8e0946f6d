"""What `graytune embed` and `graytune predict` read: images, texts or videos, each with an id.

Images and videos come from a folder (every image file, or every video file and frame folder,
below it; the id is the path relative to it) or from a .csv/.tsv/.jsonl file (the id is the
image column as written). Texts come from a UTF-8 file, one per line; the id is the line number.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from graytune.client.data.image_files import IMAGE_SUFFIXES
from graytune.client.data.preprocess import Preprocess, load_image
from graytune.client.data.tables import DataError, field, read_table
from graytune.client.data.text import read_lines

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class Item:
    id: str
    source: str  # an image or video path, or a text
    where: str  # where it was listed, for errors


def _from_table(path: str, img_key: str, separator: str) -> list[Item]:
    folder = os.path.dirname(os.path.abspath(path))
    items = []
    for line, row in read_table(path, separator):
        value = field(row, img_key, path, line)
        items.append(Item(value, os.path.join(folder, value), f"{path}, line {line}"))
    return items


def list_files(
    source: str, suffixes: tuple, frame_folders: bool = False, img_key: str = "filepath", separator: str = "\t"
) -> list[Item]:
    """The files (and, for videos, frame folders) a folder or a table lists, sorted by id."""
    if not os.path.isdir(source):
        items = _from_table(source, img_key, separator)
    else:
        items = []
        for folder, dirs, files in os.walk(source):
            dirs.sort()
            if frame_folders and any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
                dirs.clear()  # a folder of frames is one clip
                items.append(Item(os.path.relpath(folder, source), folder, folder))
                continue
            items += [
                Item(os.path.relpath(os.path.join(folder, f), source), os.path.join(folder, f), source)
                for f in sorted(files)
                if f.lower().endswith(suffixes)
            ]
        items.sort(key=lambda item: item.id)
    if not items:
        raise DataError(f"{source}: nothing to embed in it")
    return items


def list_images(source: str, **table) -> list[Item]:
    return list_files(source, IMAGE_SUFFIXES, **table)


def list_videos(source: str, **table) -> list[Item]:
    return list_files(source, VIDEO_SUFFIXES, frame_folders=True, **table)


def list_texts(path: str) -> list[Item]:
    return [Item(str(line), text, f"{path}, line {line}") for line, text in read_lines(path, "texts")]


def image_loader(preprocess: Preprocess) -> Callable[[list[Item]], torch.Tensor]:
    return lambda items: torch.stack([load_image(i.source, preprocess, i.where) for i in items])  # (B, 3, H, W)


def video_loader(preprocess: Preprocess, frames: int) -> Callable[[list[Item]], torch.Tensor]:
    from graytune.client.tasks.video.frames import read_clip

    def load(items: list[Item]) -> torch.Tensor:  # (B, T, 3, H, W)
        return torch.stack([torch.stack([preprocess(f) for f in read_clip(i.source, frames, i.where)]) for i in items])

    return load
