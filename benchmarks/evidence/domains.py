"""Target domains the owner model was not trained on, written as files in the formats `graytune
train` reads, each with train / val / test splits (val chooses learning rates, test is reported).

Two kinds of shift:
- concepts: scikit-learn's 8x8 digits upsampled (blocky, unlike MNIST), and emoji concepts held
  out of pretraining (owner.is_held_out);
- pixels: emoji the owner knows, shown inverted, with a colour cast, blurred, in grey, or as
  edge maps (sketches): the concept is known, the pixels are not, so only an input adapter can
  give the backbone back what it needs.

Every image is a view: the glyph zoomed and shifted as in pretraining (seeded), then shifted in
pixel space. Files: <domain>/<split>/NNNNN.png and <domain>/<split>.csv with columns filepath,
title (a caption), label (the class name); sketch domains also write <split>_sketch.csv
(filepath, domain, category), photos unshifted and sketches as edge maps; video domains write
<split>_video.csv (filepath, title) of MPEG-4 clips, the glyph drifting across the frame.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from evidence.owner import DIGIT_NAMES, EMOJI_TEMPLATES, OwnerData, augment, warp

SPLITS = ("train", "val", "test")


def invert(img: Image.Image) -> Image.Image:
    return ImageOps.invert(img)


def colour_cast(img: Image.Image) -> Image.Image:
    """A strong blue-green cast: red nearly gone, blue lifted."""
    pixels = np.asarray(img, dtype=np.float32)
    cast = pixels * np.array([0.25, 0.8, 0.9]) + np.array([0, 30, 90])
    return Image.fromarray(cast.clip(0, 255).astype(np.uint8))


def blur(img: Image.Image) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=img.width / 24))


def greyscale(img: Image.Image) -> Image.Image:
    return ImageOps.grayscale(img).convert("RGB")


def edges(img: Image.Image) -> Image.Image:
    """A sketch: dark strokes on white where the glyph's brightness changes."""
    padded = np.pad(np.asarray(ImageOps.grayscale(img)), 1, mode="edge")  # no edge at the frame
    lines = Image.fromarray(padded).filter(ImageFilter.FIND_EDGES).crop((1, 1, img.width + 1, img.height + 1))
    return ImageOps.invert(ImageOps.autocontrast(lines)).convert("RGB")


PIXEL_SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "inverted": invert,
    "colour-cast": colour_cast,
    "blurred": blur,
    "greyscale": greyscale,
    "edges": edges,
}


@dataclass(frozen=True)
class Domain:
    """A concept set (emoji seen or held out, or digits), a pixel shift, and its split sizes."""

    name: str
    concepts: str  # "emoji-seen", "emoji-held-out" or "digits"
    shift: str = ""  # a PIXEL_SHIFTS key, "" for none
    classes: int = 40  # concepts drawn (by a hash of their names); 0: all
    views: Sequence[int] = (16, 4, 8)  # images per concept in train, val, test
    sketch: bool = False  # also write *_sketch.csv: edge-map sketches against unshifted photos
    video: bool = False  # also write *_video.csv: one drifting clip per view


DOMAINS = {
    d.name: d
    for d in (
        Domain("digits-8x8", "digits", classes=10, views=(16, 16, 40)),
        Domain("emoji-new", "emoji-held-out"),
        Domain("emoji-inverted", "emoji-seen", "inverted"),
        Domain("emoji-colour-cast", "emoji-seen", "colour-cast"),
        Domain("emoji-blurred", "emoji-seen", "blurred"),
        Domain("emoji-greyscale", "emoji-seen", "greyscale"),
        Domain("emoji-sketch", "emoji-seen", "edges", sketch=True),
        Domain("emoji-new-motion", "emoji-held-out", views=(4, 2, 4), video=True),
        Domain("emoji-greyscale-motion", "emoji-seen", "greyscale", views=(4, 2, 4), video=True),
    )
}
CLIP_FRAMES = 8


def draw(names: list[str], k: int, salt: str) -> list[int]:
    """k indices of names, chosen by a hash of each name (stable whatever else changes)."""
    order = sorted(range(len(names)), key=lambda i: hashlib.sha256(f"{salt}:{names[i]}".encode()).digest())
    return sorted(order[:k] if k else order)


def concept_images(domain: Domain, data: OwnerData, size: int):
    """-> (images uint8 (C, S, S, 3), class names [C], caption template)."""
    if domain.concepts == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()  # (1797, 8, 8) ink 0..16
        images = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.uint8(np.round(im * 255 / 16)))
                    .resize((size, size), Image.Resampling.BICUBIC)
                    .convert("RGB")
                )
                for im in digits.images
            ]
        )
        return images, [DIGIT_NAMES[t] for t in digits.target], "a photo of the digit {}."
    images, names = data.emoji_split(held_out=domain.concepts == "emoji-held-out")
    keep = draw(names, domain.classes, domain.concepts)
    return images[keep], [names[i] for i in keep], EMOJI_TEMPLATES[0]


def views_of(images: np.ndarray, count: int, generator: torch.Generator) -> np.ndarray:
    """count zoomed and shifted views of each image, concept-major: uint8 (N * count, S, S, 3)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().repeat_interleave(count, 0)  # (N*count, 3, S, S)
    return augment(pixels, generator).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def drifting(image: np.ndarray, generator: torch.Generator, frames: int = CLIP_FRAMES) -> list[np.ndarray]:
    """(S, S, 3) uint8 -> `frames` frames of it zoomed once and drifting on a random straight path."""
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None].expand(frames, -1, -1, -1)
    scale = (0.7 + 0.3 * torch.rand(1, generator=generator)).expand(frames)
    ends = 0.5 * torch.rand(2, 2, generator=generator) - 0.25  # (start, end) x (x, y)
    path = torch.lerp(ends[0], ends[1], torch.linspace(0, 1, frames)[:, None])  # (T, 2)
    moved = warp(pixels, scale, path).round().clamp(0, 255).to(torch.uint8)
    return list(moved.permute(0, 2, 3, 1).numpy())


def write_domain(domain: Domain, out: Path, data: Callable[[], OwnerData], size: int, seed: int = 0) -> Path:
    """Writes the domain under out/<name> (if not already complete) and returns that folder;
    `data()` is called only to write it (rendering the owner's images takes a while)."""
    root = out / domain.name
    if all((root / f"{s}.csv").is_file() for s in SPLITS):
        return root
    images, labels, template = concept_images(domain, data(), size)
    generator = torch.Generator().manual_seed(seed)
    if domain.concepts == "digits":  # many real images per class: split them, no synthetic views
        rng = np.random.default_rng(seed)
        per_class = {c: rng.permutation([i for i, label in enumerate(labels) if label == c]) for c in DIGIT_NAMES}
        ends = np.cumsum(domain.views)
        splits = {
            s: [i for c in DIGIT_NAMES for i in per_class[c][ends[k] - domain.views[k] : ends[k]]]
            for k, s in enumerate(SPLITS)
        }
        split_images = {s: images[idx] for s, idx in splits.items()}
        split_labels = {s: [labels[i] for i in idx] for s, idx in splits.items()}
    else:
        split_images = {s: views_of(images, n, generator) for s, n in zip(SPLITS, domain.views)}
        split_labels = {s: [label for label in labels for _ in range(n)] for s, n in zip(SPLITS, domain.views)}
    shift = PIXEL_SHIFTS[domain.shift] if domain.shift else (lambda img: img)
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
        rows, sketch_rows, video_rows = [], [], []
        for i, (pixels, label) in enumerate(zip(split_images[split], split_labels[split])):
            photo = Image.fromarray(pixels)
            path = f"{split}/{i:05d}.png"
            shift(photo).save(root / path)
            rows.append((path, template.format(label), label))
            if domain.video:
                from graytune.client.tasks.video.frames import write_video

                clip = f"{split}/{i:05d}.mp4"
                write_video(
                    str(root / clip), [np.asarray(shift(Image.fromarray(f))) for f in drifting(pixels, generator)]
                )
                video_rows.append((clip, template.format(label)))
            if domain.sketch:  # even views as photos, odd ones as sketches
                if i % 2:
                    sketch_rows.append((path, "sketch", label))
                else:
                    photo.save(root / f"{split}/{i:05d}-photo.png")
                    sketch_rows.append((f"{split}/{i:05d}-photo.png", "photo", label))
        if domain.video:
            write_csv(root / f"{split}_video.csv", ("filepath", "title"), video_rows)
        if domain.sketch:
            write_csv(root / f"{split}_sketch.csv", ("filepath", "domain", "category"), sketch_rows)
        write_csv(root / f"{split}.csv", ("filepath", "title", "label"), rows)  # last: marks it complete
    return root


def write_csv(path: Path, header: Sequence[str], rows: list[tuple]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)
