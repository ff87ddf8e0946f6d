"""Sketch and photo images by category, as Sketchy lays them out.

A data set is a folder holding `sketch/<category>/*.png` and `photo/<category>/*.png`, or a
.csv/.tsv/.jsonl file with an image path column, `domain` (sketch or photo) and `category`.
Every category with sketches needs photos: a sketch's relevant gallery items are the photos of
its category.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import torch

from graytune.client.data.image_files import check_images, images_in
from graytune.client.data.preprocess import Preprocess, load_image
from graytune.client.data.tables import DataError, field, read_table

DOMAINS = ("sketch", "photo")
Row = tuple[str, str, str, str]  # (where listed, image path, domain, category)


def read_rows(path: str, img_key: str = "filepath", separator: str = "\t") -> list[Row]:
    if os.path.isdir(path):
        rows = [
            (os.path.join(path, domain, category), image, domain, category)
            for domain in DOMAINS
            if os.path.isdir(os.path.join(path, domain))
            for category in sorted(os.listdir(os.path.join(path, domain)))
            if os.path.isdir(os.path.join(path, domain, category))
            for image in images_in(os.path.join(path, domain, category))
        ]
        for domain in DOMAINS:
            if not any(r[2] == domain for r in rows):
                raise DataError(f"{path}: no {domain} images (expected {path}/{domain}/<category>/*.png)")
        return rows
    folder = os.path.dirname(os.path.abspath(path))
    rows = []
    for line, row in read_table(path, separator):
        where = f"{path}, line {line}"
        domain = field(row, "domain", path, line)
        if domain not in DOMAINS:
            raise DataError(f"{where}: domain must be sketch or photo, got {domain[:80]!r}")
        rows.append(
            (where, os.path.join(folder, field(row, img_key, path, line)), domain, field(row, "category", path, line))
        )
    return rows


class SketchPhotoDataset(torch.utils.data.Dataset):
    """Items are the sketches: (sketch pixels (3, H, W), category index); `photo(i)` and
    `photos_of(category)` give the gallery side. Categories are the photos', sorted."""

    def __init__(
        self, path: str, preprocess: Preprocess, img_key: str = "filepath", separator: str = "\t", seed: int = 0
    ):
        """`seed`: draws the photo paired with each training sketch (with the batch's indices)."""
        self.path, self.preprocess, self.seed = path, preprocess, seed
        rows = read_rows(path, img_key, separator)
        self.categories = sorted({c for _, _, d, c in rows if d == "photo"})
        index = {c: i for i, c in enumerate(self.categories)}
        for where, _, domain, category in rows:
            if domain == "sketch" and category not in index:
                raise DataError(f"{where}: category {category[:80]!r} has sketches but no photos")
        self.sketches = [(w, p, index[c]) for w, p, d, c in rows if d == "sketch"]
        self.photos = [(w, p, index[c]) for w, p, d, c in rows if d == "photo"]
        self._by_category: dict[int, list[int]] = {}
        for i, (_, _, label) in enumerate(self.photos):
            self._by_category.setdefault(label, []).append(i)

    def __len__(self) -> int:
        return len(self.sketches)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        where, image, label = self.sketches[index]
        return load_image(image, self.preprocess, where), label

    def photo(self, index: int) -> tuple[torch.Tensor, int]:
        where, image, label = self.photos[index]
        return load_image(image, self.preprocess, where), label

    def sketch_labels(self) -> torch.Tensor:
        return torch.tensor([label for _, _, label in self.sketches])  # (Q,)

    def photo_labels(self) -> torch.Tensor:
        return torch.tensor([label for _, _, label in self.photos])  # (G,)

    def paired_photos(self, sketch_indices: Sequence[int]) -> list[int]:
        """A photo of each sketch's category, drawn by a generator seeded by (seed, indices),
        so a resumed run draws the same pairs."""
        draw = random.Random(hash((self.seed, *sketch_indices)))
        return [draw.choice(self._by_category[self.sketches[i][2]]) for i in sketch_indices]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (sketches (B, 3, H, W), their labels (B,), a paired photo each (B, 3, H, W), labels (B,))."""
        sketches, labels = zip(*[self[i] for i in indices])
        photos, photo_labels = zip(*[self.photo(i) for i in self.paired_photos(indices)])
        return torch.stack(sketches), torch.tensor(labels), torch.stack(photos), torch.tensor(photo_labels)

    def check(self, decode: int = 16, seed: int = 0, skip_unreadable: bool = False) -> str:
        listed = [(w, p) for w, p, _ in self.sketches + self.photos]
        found = check_images(
            listed,
            lambda i: self[i] if i < len(self) else self.photo(i - len(self)),
            decode,
            seed,
            skip_unreadable=skip_unreadable,
        )
        return (
            f"{self.path}: {len(self.sketches):,} sketches and {len(self.photos):,} photos of "
            f"{len(self.categories)} categories, {found}"
        )
