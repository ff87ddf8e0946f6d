"""The customer's side: adapters trained against a remote gradient oracle.

    from graytune.client import OracleClient, GrayboxCLIP, AdapterConfig, train, TrainConfig
    from graytune.client import preprocess_for   # PIL image -> (3, H, W) as the backbone expects

Names load lazily so that `graytune.client.cli` can configure OpenMP before torch is imported.
"""
import importlib

_EXPORTS = {
    "OracleClient": "oracle_client", "OracleError": "oracle_client",
    "GrayboxCLIP": "graybox", "AdapterConfig": "graybox", "BackboneMismatch": "graybox",
    "RemoteImageTower": "remote", "RemoteTextTower": "remote",
    "save_adapters": "checkpoint", "load_adapters": "checkpoint",
    "train": "train", "evaluate": "train", "TrainConfig": "train", "preprocess_for": "train",
    "ZeroShotCLIP": "graybox", "AccessDenied": "access", "DataError": "data",
    "LocalServer": "local_server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'graytune.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"graytune.client.{_EXPORTS[name]}"), name)
