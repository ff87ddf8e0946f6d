"""Adapter directories and training checkpoints, written so a crash never leaves half a file.

An adapter directory (PEFT's layout) holds only the customer's modules:
    adapter_config.json     method, module sizes, backbone identifier, protocol version
    adapters.safetensors    the adapter weights
A training checkpoint is an adapter directory plus `training_state.pt` (optimiser, schedule,
step). Every directory is written under a temporary name and renamed into place; the run's
`latest` file, which names the newest checkpoint, is replaced atomically after it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from torch import nn

from graytune.client.adapters.graybox import AdapterConfig
from graytune.client.adapters.models import build_model
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
TRAINING_STATE = "training_state.pt"
LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Calls write(tmp_dir), syncs it, then renames it to `final` (replacing an older one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a writer killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    write(tmp)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)  # a crash from here to the next line leaves `old` complete
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_file_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Calls write(tmp_file) (same suffix as `path`), syncs it, then renames it to `path`."""
    path = Path(path)
    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    write_file_atomically(path, lambda tmp: tmp.write_text(text))


def _write_adapter_files(directory: Path, model: nn.Module) -> None:
    config = json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n"
    (directory / ADAPTER_CONFIG).write_text(config)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def save_adapters(directory: Path, model: nn.Module) -> None:
    write_dir_atomically(directory, lambda tmp: _write_adapter_files(tmp, model))


def read_config(directory: Path) -> AdapterConfig:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {ADAPTER_CONFIG}; not an adapter directory")
    return AdapterConfig.from_dict(json.loads(path.read_text()))


def load_adapters(directory: Path, oracle: OracleClient, cache: Optional[EmbeddingCache] = None,
                  config: Optional[AdapterConfig] = None) -> nn.Module:
    """Rebuilds the adapters; refuses an oracle serving another backbone. `config`: the
    directory's config, when the caller has read it already."""
    config = config or read_config(directory)
    config.check_backbone(oracle)
    model = build_model(config, oracle, cache)
    model.load_state_dict(load_file(str(Path(directory) / ADAPTER_WEIGHTS)))
    return model


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, training_state: dict,
                    keep: int = 2) -> Path:
    """Writes checkpoints/step_NNNNNNN, points `latest` at it, keeps the newest `keep`."""
    checkpoints = Path(run_dir) / "checkpoints"
    final = checkpoints / f"step_{step:07d}"

    def write(tmp: Path) -> None:
        _write_adapter_files(tmp, model)
        torch.save(training_state, tmp / TRAINING_STATE)

    write_dir_atomically(final, write)
    write_text_atomically(Path(run_dir) / LATEST, f"checkpoints/{final.name}\n")
    for old in sorted(checkpoints.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
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
