"""Embeddings and predictions written whole or not at all (a temporary file renamed into place).

.npy          a structured array: out["id"] (str) and out["embedding"] (float32, (E,))
.safetensors  the tensor "embeddings" (N, E); the ids, in order, as JSON in the metadata "ids"
.csv          predictions: id, prediction, score (its probability), then one column per class
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from graytune.client.data.files import write_file_atomically

EMBEDDING_FORMATS = (".npy", ".safetensors")


def check_output(path: str, formats: Sequence[str]) -> None:
    """Refuses an output name this writer cannot honour before anything is computed or billed."""
    if Path(path).suffix not in formats:
        raise ValueError(f"--out {path}: the file name must end in {' or '.join(formats)}")
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(f"--out {path}: no such folder {Path(path).parent}")


def write_embeddings(path: str, ids: Sequence[str], embeddings: torch.Tensor) -> None:
    embeddings = embeddings.detach().float().cpu().contiguous()  # (N, E)
    if Path(path).suffix == ".npy":
        longest = max(len(i) for i in ids)
        table = np.empty(len(ids), dtype=[("id", f"U{longest}"), ("embedding", "f4", (embeddings.shape[1],))])
        table["id"], table["embedding"] = ids, embeddings.numpy()
        write_file_atomically(Path(path), lambda tmp: np.save(tmp, table))
    else:
        write_file_atomically(
            Path(path),
            lambda tmp: save_file({"embeddings": embeddings}, str(tmp), metadata={"ids": json.dumps(list(ids))}),
        )


def write_predictions(path: str, ids: Sequence[str], probabilities: torch.Tensor, classnames: Sequence[str]) -> None:
    """probabilities (N, C) -> one row per id: its most probable class, that probability, all C."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["id", "prediction", "score", *classnames])
            for id_, row in zip(ids, probabilities.tolist()):
                best = max(range(len(row)), key=row.__getitem__)
                out.writerow([id_, classnames[best], f"{row[best]:.6f}", *(f"{p:.6f}" for p in row)])

    write_file_atomically(Path(path), write)
