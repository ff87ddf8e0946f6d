"""Training checkpoints: an adapter directory (methods/adapter_dir.py) plus `training_state.pt`
(the step, the trainer's state: optimiser and schedule, or CraFT's search). Each is written
under a temporary name and renamed into place; the run's `latest` file, which names the newest
checkpoint, is replaced atomically after it."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from graytune.client.data.files import write_dir_atomically, write_text_atomically
from graytune.client.methods.adapter_dir import write_adapter_files

TRAINING_STATE = "training_state.pt"
LATEST = "latest"


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, training_state: dict, keep: int = 2) -> Path:
    """Writes checkpoints/step_NNNNNNN, points `latest` at it, keeps the newest `keep`."""
    checkpoints = Path(run_dir) / "checkpoints"
    final = checkpoints / f"step_{step:07d}"

    def write(tmp: Path) -> None:
        write_adapter_files(tmp, model)
        torch.save(training_state, tmp / TRAINING_STATE)

    write_dir_atomically(final, write)
    write_text_atomically(Path(run_dir) / LATEST, f"checkpoints/{final.name}\n")
    for old in sorted(checkpoints.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    path = Path(run_dir) / pointer.read_text().strip()
    if not (path / TRAINING_STATE).is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which holds no {TRAINING_STATE}")
    return path


def step_of(checkpoint: Path) -> int:
    """The step a checkpoint directory (step_NNNNNNN) was saved at."""
    return int(Path(checkpoint).name.removeprefix("step_"))


def load_training_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / TRAINING_STATE, map_location="cpu", weights_only=True)
