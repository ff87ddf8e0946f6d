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
from typing import Any, ClassVar

import torch
from torch import nn

from graytune.client.data.tables import CsvFormat
from graytune.client.methods.base import AdapterConfig, Model
from graytune.client.methods.registry import build_model
from graytune.client.transport.embedding_cache import EmbeddingCache
from graytune.client.transport.oracle_client import OracleClient

log = logging.getLogger("graytune.client")

Metrics = dict[str, Any]  # floats, and dicts of floats (per-class accuracy)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a task that has none of its own."""


class Task(abc.ABC):
    name: ClassVar[str]
    # The methods it trains (their command-line names), and the metrics shown beside the progress bar.
    methods: ClassVar[tuple[str, ...]] = ("dga", "lga")
    headline: ClassVar[tuple[str, ...]]
    # What `graytune plot` draws of every evaluation when not the headline ("…@" stands for every K).
    plotted: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type] = NoOptions  # its flags (options.py)

    def __init__(self, oracle: OracleClient, csv_format: CsvFormat | None = None, options: Any = None):
        """`csv_format`: the columns and separator of CSV data files; `options`: an Options."""
        self.oracle = oracle
        self.csv_format = csv_format or CsvFormat()
        self.options = options or self.Options()

    @abc.abstractmethod
    def load(self, train_path: str | None, val_path: str | None, seed: int, skip_unreadable: bool = False):
        """(train set, val set or None), each checked before any call is billed (the train set's
        missing or unreadable files counted rather than refused with `skip_unreadable`)."""

    def saved_with_adapters(self) -> dict:
        """What inference needs besides the weights (class names, ...): adapter_config.json's `task`."""
        return {"name": self.name}

    def csv(self, *keys: str) -> dict:
        """The CSV format options (img_key, caption_key, label_key, separator) a reader takes."""
        return self.csv_format.reader(*keys)

    @staticmethod
    def log_checks(train_set: Any, val_set: Any, seed: int, skip_unreadable: bool = False) -> None:
        """Runs each data set's check (files found, a sample decoded) and logs its summary."""
        for dataset, lenient in ((train_set, skip_unreadable), (val_set, False)):
            if dataset is not None:
                log.info("%s", dataset.check(seed=seed, skip_unreadable=lenient))

    def checked(
        self, make, train_path: str | None, val_path: str | None, seed: int, skip_unreadable: bool = False
    ) -> tuple[Any, Any]:
        """(make(train_path), make(val_path)), None for a path not given, each checked and logged."""
        train_set, val_set = (make(path) if path else None for path in (train_path, val_path))
        self.log_checks(train_set, val_set, seed, skip_unreadable)
        return train_set, val_set

    def restore(self, saved: dict) -> None:  # noqa: B027 (a task that saves nothing restores nothing)
        """Takes back what `saved_with_adapters` wrote, to evaluate or use trained adapters."""

    def adapter_config(self, config: AdapterConfig) -> AdapterConfig:
        """The run's adapter config, completed by what the task knows after `load`."""
        return dataclasses.replace(config, task=self.saved_with_adapters())

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise ValueError(f"--task {self.name} trains with --method {', '.join(self.methods)}, not {method}")

    def build_model(self, config: AdapterConfig, cache: EmbeddingCache | None = None) -> nn.Module:
        return build_model(config, self.oracle, cache)

    @abc.abstractmethod
    def loss(self, model: Model, batch: Any) -> torch.Tensor:
        """The step's scalar loss; its backward reaches the input modules through the oracle."""

    @abc.abstractmethod
    def evaluate(self, model: Model, dataset: Any, batch_size: int) -> Metrics:
        """The task's metrics of `model` on `dataset`."""
