"""What a task tells the one training loop: its data, its loss, its evaluation.

A task's data sets make their own batches (`dataset.batch(indices)`), so DataLoader workers can
build them in other processes.

The loop (training/loop.py) owns everything tasks share: the run directory, resume, the data
order, the optimiser and schedule, checkpoints, the metrics log and the progress bar. A task
owns what only it knows. A task object is made from its options (the CLI's task flags) and,
once `load` has read the data, knows the data's classes or galleries too.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
from typing import Any, ClassVar, Dict, Optional, Tuple

import torch
from torch import nn

from graytune.client.adapters.graybox import AdapterConfig
from graytune.client.adapters.models import build_model
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient

log = logging.getLogger("graytune.client")

Metrics = Dict[str, Any]  # floats, and dicts of floats (per-class accuracy)


class Task(abc.ABC):
    name: ClassVar[str]
    # The methods it trains ("graybox-dga", ...), and the metrics shown beside the progress bar.
    methods: ClassVar[Tuple[str, ...]] = ("graybox-dga", "graybox-lga")
    headline: ClassVar[Tuple[str, ...]]

    def __init__(self, oracle: OracleClient, csv_format: Optional[dict] = None):
        """`csv_format`: the columns and separator of CSV data files (see TrainConfig)."""
        self.oracle = oracle
        self.csv_format = csv_format or {}

    @abc.abstractmethod
    def load(self, train_path: Optional[str], val_path: Optional[str], seed: int) -> Tuple[Any, Any]:
        """(train set, val set or None), each checked before any call is billed."""

    def saved_with_adapters(self) -> dict:
        """What inference needs besides the weights (class names, ...): adapter_config.json's `task`."""
        return {"name": self.name}

    def csv(self, *keys: str) -> dict:
        """The CSV format options (img_key, caption_key, label_key, separator) a reader takes."""
        return {k: v for k, v in self.csv_format.items() if k in keys}

    @staticmethod
    def log_check(dataset: Any, seed: int) -> None:
        """Runs the data set's check (files found, a sample decoded) and logs its summary."""
        log.info("%s", dataset.check(seed=seed))

    def checked(self, make, train_path: Optional[str], val_path: Optional[str], seed: int) -> Tuple[Any, Any]:
        """(make(train_path), make(val_path)), None for a path not given, each checked and logged."""
        sets = tuple(make(path) if path else None for path in (train_path, val_path))
        for dataset in sets:
            if dataset is not None:
                self.log_check(dataset, seed)
        return sets

    def restore(self, saved: dict) -> None:
        """Takes back what `saved_with_adapters` wrote, to evaluate or use trained adapters."""

    def adapter_config(self, config: AdapterConfig) -> AdapterConfig:
        """The run's adapter config, completed by what the task knows after `load`."""
        return dataclasses.replace(config, task=self.saved_with_adapters())

    def build_model(self, config: AdapterConfig, cache: Optional[EmbeddingCache] = None) -> nn.Module:
        if config.method not in self.methods:
            raise ValueError(f"task {self.name} trains with {', '.join(self.methods)}, not {config.method}")
        return build_model(config, self.oracle, cache)

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The step's scalar loss; its backward reaches the input modules through the oracle."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int) -> Metrics:
        """The task's metrics of `model` on `dataset`."""
