"""Image–caption data sets in OpenCLIP's CSV convention, preprocessed like OpenCLIP's validation transform.

A data set is a .csv/.tsv file (header row, one image path and one caption per row) or a .jsonl file
(one JSON object per line). Relative image paths resolve against the folder of the data set file.
"""

import csv
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
RESIZE_MODES = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class Preprocess:
    """PIL image -> normalised float32 tensor (3, height, width), like OpenCLIP's validation transform.

    resize_mode 'shortest' scales the image to cover the target and centre-crops it, 'longest' scales it
    to fit inside the target and pads it with black, 'squash' resizes to the target ignoring aspect.
    """

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise ValueError(f"Preprocess: height and width must be positive, got {self.height}x{self.width}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"Preprocess: mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocess: std must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Preprocess: interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"Preprocess: resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB")
        img = img.resize(self._resized_size(img.width, img.height), INTERPOLATIONS[self.interpolation])
        if self.resize_mode != "squash":
            img = _center_crop_or_pad(img, self.height, self.width)
        pixels = np.asarray(img, dtype=np.float32) / 255  # (H, W, 3) in [0, 1]
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, H, W)

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) to resize to before cropping/padding, rounded exactly as OpenCLIP rounds."""
        if self.resize_mode == "squash":
            return self.width, self.height
        if self.resize_mode == "shortest" and self.height == self.width:
            # OpenCLIP uses torchvision's Resize(int) here, which truncates the long side.
            short, long = sorted((width, height))
            new_long = int(self.height * long / short)
            return (self.width, new_long) if width <= height else (new_long, self.height)
        # OpenCLIP's ResizeKeepRatio: one scale for both sides, taken from the side that must cover
        # the target ('shortest') or fit inside it ('longest').
        ratios = (height / self.height, width / self.width)
        ratio = min(ratios) if self.resize_mode == "shortest" else max(ratios)
        return round(width / ratio), round(height / ratio)


def _center_crop_or_pad(img: Image.Image, height: int, width: int) -> Image.Image:
    """Centre img on a black height x width canvas, with OpenCLIP's offsets (odd padding goes right/bottom)."""
    left = (width - img.width) // 2 if width > img.width else -round((img.width - width) / 2)
    top = (height - img.height) // 2 if height > img.height else -round((img.height - height) / 2)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(img, (left, top))
    return canvas


class DataError(ValueError):
    """A data set file or one of its images cannot be used; the message names the file and line."""


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
    extension = os.path.splitext(path)[1].lower()
    if extension in (".csv", ".tsv"):
        rows = _read_csv_rows(path, separator)
    elif extension == ".jsonl":
        rows = _read_jsonl_rows(path)
    else:
        raise DataError(f"{path}: unsupported data set format {extension!r}; use .csv, .tsv or .jsonl")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such data set file")

    folder = os.path.dirname(os.path.abspath(path))
    found = []
    try:
        for line, row in rows:
            image, caption = (_field(row, key, path, line) for key in (img_key, caption_key))
            found.append((line, os.path.join(folder, image), caption))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file: {e}") from None
    if not found:
        raise DataError(f"{path}: no image-caption pairs")
    return found


def _read_csv_rows(path: str, separator: str):
    """Yields (line number, row dict)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=separator)
        for row in reader:
            yield reader.line_num, row


def _read_jsonl_rows(path: str):
    """Yields (line number, row dict), skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line}: invalid JSON: {e}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line}: expected a JSON object, got {type(row).__name__}")
            yield line, row


def _field(row: dict, key: str, path: str, line: int) -> str:
    value = row.get(key)
    if value is None:
        # csv.DictReader gives None for fields missing from a short row.
        columns = [k for k in row if k is not None]
        raise DataError(f"{path}, line {line}: missing key {key!r} (found: {columns})")
    if not isinstance(value, str) or not value:
        raise DataError(f"{path}, line {line}: {key!r} must be a non-empty string, got {value!r}")
    return value


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
        try:
            with Image.open(image_path) as img:
                return self.preprocess(img), caption
        except (OSError, Image.DecompressionBombError) as e:  # missing, unreadable or not an image
            raise DataError(f"{self.path}, line {line}: cannot read image {image_path}: "
                            f"{e.strerror if isinstance(e, FileNotFoundError) else e}") from None

    @property
    def captions(self) -> list[str]:
        return [caption for _, _, caption in self.rows]

    def check(self, decode: int = 16, seed: int = 0) -> str:
        """Before any call is billed: every image exists and `decode` of them (the first and a
        seeded sample) decode. -> a one-line summary; DataError naming file and line if not."""
        missing = [(line, image) for line, image, _ in self.rows if not os.path.isfile(image)]
        if missing:
            line, image = missing[0]
            more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
            raise DataError(f"{self.path}, line {line}: no such image file {image}{more}")
        others = 1 + torch.randperm(len(self) - 1, generator=torch.Generator().manual_seed(seed))
        sample = [0] + sorted(others[:decode - 1].tolist())
        for index in sample:
            self[index]
        return (f"{self.path}: {len(self):,} pairs, {len(set(self.captions)):,} distinct captions, "
                f"every image found, {len(sample)} decoded")


def collate(batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    """DataLoader collate_fn: -> (pixels (B, 3, H, W), captions)."""
    pixels, captions = zip(*batch)
    return torch.stack(pixels), list(captions)
