"""The batches of a run's steps, built ahead in DataLoader workers while the wire is busy.

Batch k is a function of (seed, step), so the workers' order of work changes nothing and a
resumed run continues with exactly the batches an uninterrupted one would have used. Workers are
spawned, not forked: a fork would copy the gRPC channel's threads and locks mid-use.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import torch

from graytune.client.data.tables import DataError


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Full batches in a pass over the data (an epoch's last, short batch is not taken)."""
    if batch_size > num_samples:
        raise ValueError(f"--batch-size {batch_size} exceeds the {num_samples} training samples")
    return num_samples // batch_size


def batch_indices(num_samples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The sample indices of `step`: epoch e is a permutation seeded by (seed, e)."""
    epoch, position = divmod(step, steps_per_epoch(num_samples, batch_size))
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
    """Item k: the batch of step first + k, made by the data set (`dataset.batch(indices)`);
    with `skip_unreadable`, a Partial batch of the samples that could be read."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, first: int, end: int, skip_unreadable: bool = False):
        steps_per_epoch(len(dataset), batch_size)  # a batch larger than the data set fails here
        self.dataset, self.batch_size, self.seed, self.first, self.end = dataset, batch_size, seed, first, end
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return self.end - self.first

    def __getitem__(self, k: int) -> Any:
        indices = batch_indices(len(self.dataset), self.batch_size, self.seed, self.first + k)
        try:
            try:
                return self.dataset.batch(indices)
            except DataError:
                if not self.skip_unreadable:
                    raise
                return self.readable_part(self.first + k, indices)
        except DataError as e:
            if torch.utils.data.get_worker_info() is None:
                raise
            return Unreadable(str(e))  # raised again by the trainer, as the same one line

    def readable_part(self, step: int, indices: list[int]) -> Partial:
        """The batch of the samples of `indices` that can be read, and why each other cannot.
        Which those are depends only on the files, so a resumed run skips the same ones."""
        readable, unreadable = [], []
        for index in indices:
            try:
                self.dataset.batch([index])
                readable.append(index)
            except DataError as e:
                unreadable.append(str(e))
        if not readable:
            raise DataError(f"step {step + 1}: none of its {len(indices)} samples can be read ({unreadable[0]})")
        return Partial(self.dataset.batch(readable), tuple(unreadable))


@dataclass(frozen=True)
class Unreadable:
    """A batch a worker could not make, and why. A DataError raised in a worker would reach the
    trainer as a new exception holding the worker's whole traceback as its message."""

    message: str


@dataclass(frozen=True)
class Partial:
    """A batch without the samples that could not be read (--skip-unreadable), and why each could not."""

    batch: Any
    unreadable: tuple[str, ...]


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode and resize; the cores are the server's and the step's
    # Ctrl-C reaches the whole process group; the trainer handles it and then stops its workers.
    # A worker killed by it mid-transfer would print the tracebacks of a broken pipe instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def step_batches(
    dataset: Any,
    batch_size: int,
    seed: int,
    first: int,
    end: int,
    workers: int,
    skipped: Callable[[tuple[str, ...]], None] | None = None,
) -> Iterator[Any]:
    """The batches of steps [first, end), `workers` processes ahead (0: built on this thread);
    DataError naming the file and line of an image that cannot be read. With `skipped`, such
    samples are left out of their batch instead, and `skipped` is told why, before the batch is
    yielded."""
    ahead: dict[str, Any] = (
        dict(multiprocessing_context="spawn", prefetch_factor=2, worker_init_fn=_worker_init) if workers else {}
    )
    loader = torch.utils.data.DataLoader(
        StepBatches(dataset, batch_size, seed, first, end, skip_unreadable=skipped is not None),
        batch_size=None,
        num_workers=workers,
        **ahead,
    )
    for batch in loader:
        if isinstance(batch, Unreadable):
            raise DataError(batch.message)
        if isinstance(batch, Partial):
            assert skipped is not None
            skipped(batch.unreadable)
            batch = batch.batch
        yield batch
