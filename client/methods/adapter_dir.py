"""Adapter directories (PEFT's layout), holding only the customer's modules:

    adapter_config.json     method, module sizes, backbone identifier, protocol version
    adapters.safetensors    the adapter weights

written whole or not at all (data/files.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import load_file, save_file
from torch import nn

from graytune.client.data.files import write_dir_atomically
from graytune.client.methods.base import AdapterConfig, Model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
C = TypeVar("C", bound=AdapterConfig)
M = TypeVar("M", bound=nn.Module)


def write_adapter_files(directory: Path, model: Model) -> None:
    """The model's config and weights into `directory`, which exists (not atomic by itself)."""
    config = json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n"
    (directory / ADAPTER_CONFIG).write_text(config)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def save_adapters(directory: Path, model: nn.Module) -> None:
    write_dir_atomically(Path(directory), lambda tmp: write_adapter_files(tmp, model))


def read_config(directory: str | Path, cls: type[C]) -> C:
    """adapter_config.json as a `cls` (an AdapterConfig subclass); a key it has not is refused,
    except in the layout of graytune 0.2.0, which wrote every method's fields (and CraFT's
    under `craft`): there the other methods' fields are dropped."""
    values = read_values(directory)
    fields = {f.name for f in dataclasses.fields(cls)}
    if isinstance(values.get("craft"), dict):  # 0.2.0
        values = {k: v for k, v in {**values, **values.pop("craft")}.items() if k in fields}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{Path(directory) / ADAPTER_CONFIG}: unknown keys {unknown}")
    return cls(**values)


def read_values(directory: str | Path) -> dict[str, Any]:
    """adapter_config.json's fields as written (a top-level JSON list, e.g. `domains`, as a tuple)."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {ADAPTER_CONFIG}; not an adapter directory")
    values = json.loads(path.read_text())
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def load_weights(directory: str | Path, model: M) -> M:
    """`model` with the directory's weights."""
    model.load_state_dict(load_file(str(Path(directory) / ADAPTER_WEIGHTS)))
    return model
