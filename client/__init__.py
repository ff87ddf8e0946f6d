"""The customer's side: adapters trained against a remote gradient oracle.

    transport/   OracleClient, the remote towers (autograd through the server), tier checks
    data/        data set files, image preprocessing, batching, atomic writes
    modules/     the learnable layers (pixel adapter, text prompt, ...) and the backbone alone
    methods/     one folder per method (graybox: DGA and LGA, linear_probe, craft), the registry
    tasks/       one folder per task (retrieval, classify, sketch, video): data, loss, metrics
    training/    the one run loop, the run directory, checkpoints
    inference/   trained adapters in use: load_model, `graytune embed`, `graytune predict`
    demo/        the offline digits data and `graytune demo`
    cli.py, options.py (flags from dataclasses), plot.py

    from graytune.client import OracleClient, GrayboxCLIP, GrayboxConfig, train, TrainConfig
    from graytune.client import preprocess_for   # PIL image -> (3, H, W) as the backbone expects
    model = load_model("runs/x/adapter", oracle)  # encode_image, encode_text (, classify)

Importing the package sets OpenMP's wait policy to passive (graytune/openmp.py) unless the
environment sets one: a client mostly waits on the server, and its idle threads must not spin
on the cores the server computes on. Its names load lazily, so that this happens before any
module here imports torch.
"""

import importlib

from graytune.openmp import wait_passively

wait_passively()

_EXPORTS = {
    "OracleClient": "transport.oracle_client",
    "OracleError": "transport.oracle_client",
    "RemoteImageTower": "transport.remote",
    "RemoteTextTower": "transport.remote",
    "AccessDenied": "transport.access",
    "LocalServer": "transport.local_server",
    "GrayboxCLIP": "methods.graybox.model",
    "GrayboxConfig": "methods.graybox.config",
    "DGAOptions": "methods.graybox.options",
    "LGAOptions": "methods.graybox.options",
    "AdapterConfig": "methods.base",
    "BackboneMismatch": "methods.base",
    "ZeroShotCLIP": "modules.backbone",
    "save_adapters": "methods.adapter_dir",
    "load_adapters": "methods.registry",
    "GradientOptions": "methods.gradient",
    "CraftOptions": "methods.craft.options",
    "train": "training.loop",
    "TrainConfig": "training.loop",
    "evaluate": "tasks.retrieval.task",
    "preprocess_for": "data.preprocess",
    "DataError": "data.tables",
    "load_model": "inference.model",
    "Classifier": "inference.model",
    "CraftClassifier": "methods.craft.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'graytune.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"graytune.client.{_EXPORTS[name]}"), name)
