"""The batches of a run's steps, built ahead in DataLoader workers while the wire is busy.

Batch k is a function of (seed, step), so the workers' order of work changes nothing and a
resumed run continues with exactly the batches an uninterrupted one would have used. Workers are
spawned, not forked: a fork would copy the gRPC channel's threads and locks mid-use.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import torch

from graytune.client.data.tables import DataError


def batch_indices(num_samples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The sample indices of `step`: epoch e is a permutation seeded by (seed, e)."""
    per_epoch = num_samples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training samples")
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return order[position * batch_size : (position + 1) * batch_size].tolist()


class Sliceable(Protocol):
    """What slices into its own type: a list, range, tensor, ..."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> Self: ...


S = TypeVar("S", bound=Sliceable)


def chunks(items: S, size: int) -> Iterator[S]:
    """Consecutive slices of `size` items (a list, range or tensor), the last one short."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_order(dataset: Any, batch_size: int) -> Iterator[Any]:
    """The data set's batches in order, the last one short: what an evaluation walks through."""
    for indices in chunks(range(len(dataset)), batch_size):
        yield dataset.batch(indices)


class StepBatches(torch.utils.data.Dataset):
    """Item k: the batch of step first + k, made by the data set (`dataset.batch(indices)`)."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, first: int, end: int):
        batch_indices(len(dataset), batch_size, seed, 0)  # a batch larger than the data set fails here
        self.dataset, self.batch_size, self.seed, self.first, self.end = dataset, batch_size, seed, first, end

    def __len__(self) -> int:
        return self.end - self.first

    def __getitem__(self, k: int) -> Any:
        indices = batch_indices(len(self.dataset), self.batch_size, self.seed, self.first + k)
        try:
            return self.dataset.batch(indices)
        except DataError as e:
            if torch.utils.data.get_worker_info() is None:
                raise
            return Unreadable(str(e))  # raised again by the trainer, as the same one line


@dataclass(frozen=True)
class Unreadable:
    """A batch a worker could not make, and why. A DataError raised in a worker would reach the
    trainer as a new exception holding the worker's whole traceback as its message."""

    message: str


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode and resize; the cores are the server's and the step's
    # Ctrl-C reaches the whole process group; the trainer handles it and then stops its workers.
    # A worker killed by it mid-transfer would print the tracebacks of a broken pipe instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def step_batches(dataset: Any, batch_size: int, seed: int, first: int, end: int, workers: int) -> Iterator[Any]:
    """The batches of steps [first, end), `workers` processes ahead (0: built on this thread);
    DataError naming the file and line of an image that cannot be read."""
    ahead: dict[str, Any] = (
        dict(multiprocessing_context="spawn", prefetch_factor=2, worker_init_fn=_worker_init) if workers else {}
    )
    loader = torch.utils.data.DataLoader(
        StepBatches(dataset, batch_size, seed, first, end), batch_size=None, num_workers=workers, **ahead
    )
    for batch in loader:
        if isinstance(batch, Unreadable):
            raise DataError(batch.message)
        yield batch
