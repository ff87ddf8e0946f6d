"""The demo data set: scikit-learn's 1,797 handwritten 8x8 digits as captioned PNGs in OpenCLIP's CSV format.

Layout under out_dir: images/NNNN.png (NNNN = index in load_digits), train.csv and val.csv (tab-separated,
header `filepath<TAB>title`, paths relative to out_dir). Training captions vary the wording; validation uses
one caption per class, so the validation captions form a 10-class zero-shot gallery. For classification,
train_labels.csv and val_labels.csv hold the same split with a `label` column (the digit's name). For
sketch retrieval, train_sketch.csv and val_sketch.csv (columns filepath, domain, category) take the same
split's even-numbered images as photos and the odd-numbered ones, drawn as dark strokes on white
(sketches/NNNN.png), as sketches: a pixel-space shift the backbone never saw.
"""

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from graytune.client.data.files import write_file_atomically
from graytune.client.tasks.retrieval.data import read_pairs

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VAL_TEMPLATE = "a photo of the digit {name}."
TRAIN_TEMPLATES = (
    VAL_TEMPLATE,
    "a handwritten {name}.",
    "the number {name}, written by hand.",
    "a scanned image of a handwritten {name}.",
    "a low-resolution picture of the digit {name}.",
)


def write_digits(
    out_dir: str | os.PathLike, seed: int = 0, val_fraction: float = 0.2, upscale: int = 1
) -> dict[str, str]:
    """Writes the digits data set (if not already there) and returns {'train': csv path, 'val': csv path}.

    The split is stratified by class and fixed by `seed`. An existing data set in out_dir is reused as is,
    whatever settings it was written with; delete out_dir to rebuild it.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f"upscale must be a positive integer, got {upscale}")
    out_dir = os.fspath(out_dir)
    paths = {
        split: os.path.join(out_dir, f"{split}.csv")
        for split in ("train", "val", "train_labels", "val_labels", "train_sketch", "val_sketch")
    }
    if _is_complete(paths):
        return paths

    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("write_digits needs scikit-learn: pip install scikit-learn") from e
    digits = load_digits()  # images (1797, 8, 8) in 0..16, target (1797,)

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    filepaths = []
    for index, image in enumerate(digits.images):
        # Values are ink density, 0..16: kept as brightness, like MNIST's white ink on black.
        pixels = np.round(image * (255 / 16)).astype(np.uint8)
        pixels = pixels.repeat(upscale, axis=0).repeat(upscale, axis=1)  # nearest-neighbour upscale
        filepath = f"images/{index:04d}.png"
        Image.fromarray(pixels).save(os.path.join(out_dir, filepath))  # uint8 (H, W): grayscale PNG
        filepaths.append(filepath)

    rng = np.random.default_rng(seed)
    train, val = _stratified_split(digits.target, val_fraction, rng)
    template_choice = rng.integers(len(TRAIN_TEMPLATES), size=len(digits.target))
    # CSVs come last: their presence marks a complete data set.
    _write_csv(
        paths["train"],
        [(filepaths[i], TRAIN_TEMPLATES[template_choice[i]].format(name=DIGIT_NAMES[digits.target[i]])) for i in train],
    )
    _write_csv(paths["val"], [(filepaths[i], VAL_TEMPLATE.format(name=DIGIT_NAMES[digits.target[i]])) for i in val])
    for split, indices in (("train_labels", train), ("val_labels", val)):
        _write_csv(paths[split], [(filepaths[i], DIGIT_NAMES[digits.target[i]]) for i in indices], label="label")
    os.makedirs(os.path.join(out_dir, "sketches"), exist_ok=True)
    for split, indices in (("train_sketch", train), ("val_sketch", val)):
        rows = []
        for i in indices:
            if i % 2:
                sketch = f"sketches/{i:04d}.png"
                _pen_strokes(os.path.join(out_dir, filepaths[i])).save(os.path.join(out_dir, sketch))
            rows.append((sketch, "sketch") if i % 2 else (filepaths[i], "photo"))
        _write_csv(
            paths[split],
            [(path, domain, DIGIT_NAMES[digits.target[i]]) for (path, domain), i in zip(rows, indices)],
            label="domain\tcategory",
        )
    return paths


def _pen_strokes(path: str) -> Image.Image:
    """A digit as a sketch: dark strokes on white paper, smoothed at 4x the size."""
    with Image.open(path) as img:
        big = img.convert("L").resize((img.width * 4, img.height * 4), Image.Resampling.BILINEAR)
    return ImageOps.invert(big.filter(ImageFilter.GaussianBlur(1)))


def _is_complete(paths: dict) -> bool:
    return all(os.path.exists(p) for p in paths.values()) and all(
        os.path.exists(image) for split in ("train", "val") for image, _ in read_pairs(paths[split])
    )


def _stratified_split(labels: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Sorted (train indices, val indices), val_fraction of each class in val."""
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # At least one image per class on each side, so every class is both trained on and evaluated.
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return sorted(train), sorted(val)


def _write_csv(path: str, rows: list[tuple[str, ...]], label: str = "title"):
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["filepath", *label.split("\t")])
            writer.writerows(rows)

    write_file_atomically(Path(path), write)
