"""The customer's side: adapters trained against a remote gradient oracle.

    transport/   OracleClient, the remote towers (autograd through the server), tier checks
    adapters/    the customer's modules (GrayboxCLIP, ZeroShotCLIP)
    training/    the one training loop, the run directory, checkpoints
    craft/       the black-box method: CMA-ES prompt search and refinement module (CraftClassifier)
    tasks/       one package per task (retrieval, classify, sketch, video): data, loss, metrics, evaluation
    inference/   trained adapters in use: load_model, `graytune embed`, `graytune predict`
    data/        data set files, image preprocessing, the demo digits
    cli.py, demo.py, plot.py

    from graytune.client import OracleClient, GrayboxCLIP, AdapterConfig, train, TrainConfig
    from graytune.client import preprocess_for   # PIL image -> (3, H, W) as the backbone expects
    model = load_model("runs/x/adapter", oracle)  # encode_image, encode_text (, classify)

Names load lazily so that `graytune.client.cli` can configure OpenMP before torch is imported.
"""
import importlib

_EXPORTS = {
    "OracleClient": "transport.oracle_client", "OracleError": "transport.oracle_client",
    "RemoteImageTower": "transport.remote", "RemoteTextTower": "transport.remote",
    "AccessDenied": "transport.access", "LocalServer": "transport.local_server",
    "GrayboxCLIP": "adapters.graybox", "AdapterConfig": "adapters.graybox",
    "BackboneMismatch": "adapters.graybox", "ZeroShotCLIP": "adapters.graybox",
    "save_adapters": "training.checkpoint", "load_adapters": "training.checkpoint",
    "train": "training.loop", "TrainConfig": "training.loop",
    "evaluate": "tasks.retrieval.task", "preprocess_for": "data.preprocess", "DataError": "data.tables",
    "load_model": "inference.model", "Classifier": "inference.model",
    "CraftClassifier": "craft.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'graytune.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"graytune.client.{_EXPORTS[name]}"), name)
