"""The methods, by their command-line name and by the name adapter_config.json records."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from graytune.client.methods import adapter_dir
from graytune.client.methods.base import AdapterConfig, Method
from graytune.client.methods.craft.method import Craft
from graytune.client.methods.graybox.method import DGA, LGA
from graytune.client.methods.linear_probe.method import LinearProbeMethod
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient

METHODS: dict[str, Method] = {m.name: m for m in (DGA(), LGA(), LinearProbeMethod(), Craft())}
_SAVED: dict[str, Method] = {saved: m for m in METHODS.values() for saved in m.saved_as}


def method(name: str) -> Method:
    """A method by its command-line name (dga, lga, linear-probe, craft)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def saved_method(saved_name: str, where: str = "adapter_config.json") -> Method:
    """A method by the name adapter_config.json records (graybox-dga, ...)."""
    if saved_name not in _SAVED:
        raise ValueError(f"{where}: unknown method {saved_name!r} (this client knows {', '.join(_SAVED)})")
    return _SAVED[saved_name]


def read_config(directory: str | Path) -> AdapterConfig:
    """An adapter directory's config, as its method's AdapterConfig."""
    where = str(Path(directory) / adapter_dir.ADAPTER_CONFIG)
    return adapter_dir.read_config(
        directory, saved_method(adapter_dir.read_values(directory).get("method", ""), where).config
    )


def build_model(config: AdapterConfig, oracle: OracleClient, cache: EmbeddingCache | None = None) -> nn.Module:
    return saved_method(config.method).build_model(config, oracle, cache)


def load_adapters(
    directory: str | Path,
    oracle: OracleClient,
    cache: EmbeddingCache | None = None,
    config: AdapterConfig | None = None,
) -> nn.Module:
    """Rebuilds the adapters; refuses an oracle serving another backbone. `config`: the
    directory's config, when the caller has read it already."""
    config = config or read_config(directory)
    config.check_backbone(oracle)
    return adapter_dir.load_weights(directory, build_model(config, oracle, cache))
