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
    skip_unreadable: bool = False,
) -> str:
    """listed[i] = (where item i was listed, its file path); `load(i)` decodes item i.
    Every file must exist, and `decode` of them (the first and a seeded sample) must decode:
    DataError naming where a bad one was listed. With `skip_unreadable` (training data the
    run's batches skip, data/batches.py), bad ones are counted instead.
    -> what was found, for the data set's summary line: "every image file found, 16 decoded"."""
    missing = [(where, path) for where, path in listed if not exists(path)]
    if missing and not skip_unreadable:
        where, path = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{where}: no such {what} {path}{more}")
    others = 1 + torch.randperm(len(listed) - 1, generator=torch.Generator().manual_seed(seed))
    sample = [0] + sorted(others[: decode - 1].tolist())
    failed = 0
    for index in sample:
        try:
            load(index)
        except DataError:
            if not skip_unreadable:
                raise
            failed += 1
    found = f"{len(missing):,} of {len(listed):,} missing (skipped)" if missing else f"every {what} found"
    return f"{found}, {len(sample) - failed} of {len(sample)} decoded" if failed else f"{found}, {len(sample)} decoded"
