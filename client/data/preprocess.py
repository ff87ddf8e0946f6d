"""Images as the oracle's backbone expects them, like OpenCLIP's validation transform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from graytune.client.data.tables import DataError
from graytune.pixel_adapter import normalise

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
            raise ValueError(
                f"Preprocess: interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"Preprocess: resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB")
        img = img.resize(self._resized_size(img.width, img.height), INTERPOLATIONS[self.interpolation])
        if self.resize_mode != "squash":
            img = _center_crop_or_pad(img, self.height, self.width)
        eight_bit = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W)
        return normalise(eight_bit, self.mean, self.std).contiguous()  # as the server normalises uint8 pixels

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


def preprocess_for(oracle) -> Preprocess:
    """The preprocessing the oracle's backbone expects (size, normalisation), from Describe."""
    image = oracle.info().image
    return Preprocess(
        image.height, image.width, tuple(image.mean), tuple(image.std), image.interpolation, image.resize_mode
    )


def load_image(path: str, preprocess: Preprocess, where: str) -> torch.Tensor:
    """The image a data set row names, preprocessed: (3, H, W). One that cannot be read fails
    naming `where` it was listed ("train.csv, line 4", a class folder)."""
    try:
        with Image.open(path) as img:
            return preprocess(img)
    except (OSError, Image.DecompressionBombError) as e:  # missing, unreadable or not an image
        raise DataError(
            f"{where}: cannot read image {path}: {e.strerror if isinstance(e, FileNotFoundError) else e}"
        ) from None
