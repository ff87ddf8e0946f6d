"""One run over several trainer processes (torchrun, or `graytune train --nproc N`), data-parallel
on the CPU's gloo backend.

Every process builds the same global batch; each sends only its shard of each encoder call to
the oracle (so the samples charged are those of a one-process run) and all-gathers the others'
embeddings. Every process then computes the same loss over the whole batch. The gather's
backward sums each row's gradient over the processes, so with the loss divided by the number of
processes a row's gradient is exactly its one-process value; summing the modules' parameter
gradients over the processes then gives the one-process gradient, and every process takes the
same optimiser step. Only rank 0 evaluates and writes the run directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# What a sharded model offers the tasks' losses: the encoders, split by rows, and the temperature.
ENCODERS = ("encode_image", "encode_text", "encode_video")


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    # A process group per encoder: a task may call two encoders at once, from two threads, and
    # collectives of one group must come in the same order on every process.
    groups: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, total: int) -> tuple[int, int]:
        """This process's rows [start, end) of `total`: contiguous, sizes differing by at most one."""
        base, extra = divmod(total, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def gather(self, local: torch.Tensor, total: int, group: Any = None) -> torch.Tensor:
        """(rows of this process, ...) -> (total, ...), every process's rows in rank order."""
        return _Gather.apply(local, self, total, group)

    def sum_gradients(self, model: nn.Module) -> None:
        """Each parameter's gradient summed over the processes, in one all-reduce."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            torch.nn.utils.vector_to_parameters(flat, grads)  # copies back into each .grad

    def sum_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Counts summed over the processes (a name one lacks counts 0 there)."""
        every: list[dict[str, int]] = [{} for _ in range(self.world)]
        dist.all_gather_object(every, counts)
        names = sorted(set().union(*every))
        return {name: sum(c.get(name, 0) for c in every) for name in names}

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any process (a collective: all call it)."""
        flags = torch.tensor([int(flag)])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags.item())

    def barrier(self) -> None:
        dist.barrier()


def from_environment() -> Ranks | None:
    """The process's rank when torchrun started several (WORLD_SIZE > 1), its process group
    joined; None for a one-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return None
    global _ranks
    if _ranks is None:
        dist.init_process_group("gloo")
        # The processes share the machine's cores: each takes its part.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        groups = {name: dist.new_group(backend="gloo") for name in ENCODERS}  # in one order on every process
        _ranks = Ranks(dist.get_rank(), dist.get_world_size(), groups)
    return _ranks


_ranks: Ranks | None = None  # this process's, once its group is joined


class _Gather(torch.autograd.Function):
    """All-gather of rows of unequal counts, with autograd: backward sums the gradient of this
    process's rows over every process (each computed its loss with them)."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, ranks: Ranks, total: int, group: Any) -> torch.Tensor:
        ctx.ranks, ctx.total, ctx.group = ranks, total, group
        counts = [Ranks(r, ranks.world).rows(total) for r in range(ranks.world)]
        most = max(end - start for start, end in counts)
        padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(ranks.world)]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[: end - start] for part, (start, end) in zip(parts, counts)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce writes in place
        dist.all_reduce(grad, group=ctx.group)
        start, end = ctx.ranks.rows(ctx.total)
        return grad[start:end], None, None, None


class ShardedModel:
    """The model as a task's loss sees it: each encoder call sends this process's rows to the
    oracle and returns every process's embeddings; the temperature is the model's."""

    def __init__(self, model: Any, ranks: Ranks):
        """`model`: a method's model (methods/base.Model), whose encoders it splits."""
        self.model, self.ranks = model, ranks

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale()

    def __getattr__(self, name: str) -> Any:
        if name not in ENCODERS:
            raise AttributeError(f"a model trained over several processes offers {', '.join(ENCODERS)}, not {name}")
        encode = getattr(self.model, name)

        def sharded(inputs: torch.Tensor | Sequence[str]) -> torch.Tensor:  # (B, ...) or B texts -> (B, E)
            start, end = self.ranks.rows(len(inputs))
            # No rows here (fewer than processes): none sent, but this process still gathers,
            # and its gather's backward still runs (every process's must).
            local = encode(inputs[start:end]) if end > start else self.nothing()
            if not local.requires_grad:  # nothing learns before it: a gradient is still gathered back
                local = local.detach().requires_grad_()
            return self.ranks.gather(local, len(inputs), self.ranks.groups.get(name))

        return sharded

    def nothing(self) -> torch.Tensor:
        return torch.zeros(0, self.model.config.embed_dim)  # (0, E)
