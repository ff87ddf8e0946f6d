"""Labelled images for few-shot classification, as CoOp reads them.

A data set is a folder with one subfolder of images per class (`root/<class>/*.png|jpg`), or a
.csv/.tsv/.jsonl file with an image path column and a label column. Class names come from the
folder names or labels (sorted), or from a `--classnames` file (line i names class i; labels
are then those names or their 0-based indices). `few_shot_split` draws K images per class with
a seed; the rest can serve as the evaluation split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graytune.client.data.image_files import check_images, images_in
from graytune.client.data.preprocess import Preprocess, load_image
from graytune.client.data.tables import DataError, field, read_table
from graytune.client.data.text import read_lines

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass(frozen=True)
class LabeledImage:
    where: str  # where it was listed: "train.csv, line 4" or its class folder
    path: str
    label: int


def read_classnames(path: str) -> list[str]:
    names: list[str] = []
    seen: dict[str, int] = {}  # name -> its line
    for line, name in read_lines(path, "class names"):
        if name in seen:
            raise DataError(f"{path}, line {line}: class name {name!r} repeats line {seen[name]}")
        seen[name] = line
        names.append(name)
    return names


def read_templates(path: str) -> list[str]:
    """Prompt templates, one per line, each with one `{}` where the class name goes."""
    templates = []
    for line, template in read_lines(path, "prompt templates"):
        if template.count("{}") != 1:
            raise DataError(
                f"{path}, line {line}: a template needs exactly one {{}} for the class name, got {template[:80]!r}"
            )
        templates.append(template)
    return templates


def read_labeled(
    path: str,
    classnames: Sequence[str] | None = None,
    img_key: str = "filepath",
    label_key: str = "label",
    separator: str = "\t",
) -> tuple[list[LabeledImage], list[str]]:
    """-> (images with label indices, class names) from a class-folder tree or a table file."""
    if os.path.isdir(path):
        found = [
            (os.path.join(path, name), image, name)
            for name in sorted(os.listdir(path))
            if os.path.isdir(os.path.join(path, name))
            for image in images_in(os.path.join(path, name))
        ]
        if not found:
            raise DataError(f"{path}: no class folders with images (expected {path}/<class>/*.png)")
    else:
        folder = os.path.dirname(os.path.abspath(path))
        found = [
            (
                f"{path}, line {line}",
                os.path.join(folder, field(row, img_key, path, line)),
                field(row, label_key, path, line),
            )
            for line, row in read_table(path, separator)
        ]
        if not found:
            raise DataError(f"{path}: no labelled images")
    if classnames is None:
        classnames = sorted({label for _, _, label in found})
    index = {name: i for i, name in enumerate(classnames)}
    images = []
    for where, image, label in found:
        if label in index:
            images.append(LabeledImage(where, image, index[label]))
        elif label.isdigit() and int(label) < len(classnames):
            images.append(LabeledImage(where, image, int(label)))
        else:
            raise DataError(
                f"{where}: unknown label {label[:80]!r}: not one of the {len(classnames)} "
                f"class names, nor an index below {len(classnames)}"
            )
    return images, list(classnames)


def few_shot_split(
    images: Sequence[LabeledImage], classnames: Sequence[str], shots: int, seed: int, source: str
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """-> (K seeded images per class, the rest); every class needs at least K images."""
    train, rest = [], []
    generator = torch.Generator().manual_seed(seed)
    for label, name in enumerate(classnames):
        members = [image for image in images if image.label == label]
        if len(members) < shots:
            raise DataError(f"{source}: class {name!r} has {len(members)} images, fewer than --shots {shots}")
        order = torch.randperm(len(members), generator=generator).tolist()
        train += [members[i] for i in sorted(order[:shots])]
        rest += [members[i] for i in sorted(order[shots:])]
    return train, rest


class LabeledImageDataset(torch.utils.data.Dataset):
    """Items are (pixels (3, H, W) float32, label index); images load lazily."""

    def __init__(self, source: str, images: Sequence[LabeledImage], classnames: Sequence[str], preprocess: Preprocess):
        if not images:
            raise DataError(f"{source}: no images left for this split")
        self.source, self.images, self.classnames = source, list(images), list(classnames)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        return load_image(image.path, self.preprocess, image.where), image.label

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pixels (B, 3, H, W), labels (B,))."""
        return collate([self[i] for i in indices])

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([image.label for image in self.images])  # (N,)

    def check(self, decode: int = 16, seed: int = 0, skip_unreadable: bool = False) -> str:
        """Before any call is billed: every image exists and `decode` of them decode."""
        found = check_images(
            [(i.where, i.path) for i in self.images], self.__getitem__, decode, seed, skip_unreadable=skip_unreadable
        )
        classes = len(set(self.labels.tolist()))
        return f"{self.source}: {len(self):,} images of {classes} of {len(self.classnames)} classes, {found}"


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (pixels (B, 3, H, W), labels (B,))."""
    pixels, labels = zip(*batch)
    return torch.stack(pixels), torch.tensor(labels)
