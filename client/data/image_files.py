"""Image files listed by a data set: found on disk and decodable, checked before any call is billed."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from graytune.client.data.tables import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def images_in(folder: str) -> list:
    """The image files directly in `folder`, sorted by name."""
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, f))
    )


def check_images(
    listed: Sequence[tuple[str, str]],
    load: Callable[[int], object],
    decode: int = 16,
    seed: int = 0,
    exists: Callable[[str], bool] = os.path.isfile,
    what: str = "image file",
) -> int:
    """listed[i] = (where item i was listed, its image path); `load(i)` decodes item i.
    Every image must exist, and `decode` of them (the first and a seeded sample) must decode.
    -> how many were decoded; DataError naming where a bad one was listed."""
    missing = [(where, image) for where, image in listed if not exists(image)]
    if missing:
        where, image = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{where}: no such {what} {image}{more}")
    others = 1 + torch.randperm(len(listed) - 1, generator=torch.Generator().manual_seed(seed))
    sample = [0] + sorted(others[: decode - 1].tolist())
    for index in sample:
        load(index)
    return len(sample)
