"""The gradient step of DGA, LGA and the linear probe: the task's loss, backward (through the
oracle to the input modules, where any learn), AdamW under a cosine schedule with warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from graytune.client.data.batches import step_batches
from graytune.client.methods.base import ConfigT, Method, Model, Trainer, TrainingContext
from graytune.client.methods.distributed import Ranks, ShardedModel
from graytune.client.options import option


@dataclass(frozen=True)
class GradientOptions:
    """The optimiser's options, shared by the methods that train by gradient descent."""

    steps: int = option(100, "optimiser steps in all")
    lr: float = option(1e-3, "peak learning rate of AdamW")
    wd: float = option(0.0, "weight decay of AdamW")
    warmup: int = option(10, "steps of linear warm-up before the cosine decay")
    workers: int = option(2, "DataLoader processes decoding and resizing batches ahead of the step (0: none)")

    # What a resume may change: the same batches, made in more or fewer processes.
    FREE_ON_RESUME: ClassVar[tuple[str, ...]] = ("workers",)


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# The modules in front of the backbone, by attribute name, in every model class.
INPUT_MODULES = ("pixel_adapter", "pixel_adapters", "text_prompt", "image_prompts", "text_prompts")


def parameter_groups(model: nn.Module, lr: float, input_lr: float | None = None) -> list[dict]:
    """AdamW's groups: one at `lr`, or with `input_lr` the input modules at that rate and the
    rest (output adapters, temperature, classifiers) at `lr`."""
    if input_lr is None:
        return [{"params": list(model.parameters()), "lr": lr}]
    named = list(model.named_parameters())
    inputs = [p for name, p in named if name.split(".")[0] in INPUT_MODULES]
    rest = [p for name, p in named if name.split(".")[0] not in INPUT_MODULES]
    return [{"params": inputs, "lr": input_lr}, {"params": rest, "lr": lr}]


def train_step(
    loss_of: Callable[[Model, Any], torch.Tensor],
    model: nn.Module,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    ranks: Ranks | None = None,
) -> torch.Tensor:
    """One update: the loss, backward (through the oracle to the input modules), AdamW. With
    `ranks`, this process's part of a data-parallel step (methods/distributed.py): the same
    loss and update as one process over the whole batch."""
    loss = loss_of(model if ranks is None else ShardedModel(model, ranks), batch)
    optimizer.zero_grad(set_to_none=True)
    (loss if ranks is None else loss / ranks.world).backward()
    if ranks is not None:
        ranks.sum_gradients(model)
    optimizer.step()
    schedule.step()
    return loss


class GradientTrainer(Trainer):
    """Batch k of the run is a function of (seed, k) (training/batches.py): a resumed run takes
    exactly the batches the uninterrupted one would have."""

    def __init__(
        self,
        model: Model,
        options: GradientOptions,
        run: Any,
        train_set: Any,
        loss_of: Callable[[nn.Module, Any], torch.Tensor],
        state: dict[str, Any],
        ranks: Ranks | None = None,
    ):
        self.model, self.options, self.run, self.train_set, self.loss_of = model, options, run, train_set, loss_of
        self.ranks = ranks
        groups = parameter_groups(model, options.lr, getattr(options, "input_lr", None))
        self.optimizer = torch.optim.AdamW(groups, weight_decay=options.wd)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(options.warmup, options.steps)
        )
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])

    def batches(self, first: int, end: int) -> Iterable[Any]:
        return step_batches(self.train_set, self.run.batch_size, self.run.seed, first, end, self.options.workers)

    def step(self, step: int, batch: Any) -> dict[str, float]:
        loss = train_step(self.loss_of, self.model, batch, self.optimizer, self.schedule, self.ranks)
        record = {"loss": loss.item(), "lr": float(self.schedule.get_last_lr()[0])}
        if hasattr(self.model, "logit_scale"):
            record["logit_scale"] = self.model.logit_scale().item()
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}


GradientOptionsT = TypeVar("GradientOptionsT", bound=GradientOptions)


class GradientMethod(Method[ConfigT, GradientOptionsT]):
    """A method that trains its model by the GradientTrainer: `options` are GradientOptions."""

    def steps(self, options: GradientOptionsT, task_options: Any) -> int:
        return options.steps

    def trainer(self, model: Model, options: GradientOptionsT, context: TrainingContext) -> Trainer:
        return GradientTrainer(
            model, options, context.run, context.train_set, context.task.loss, context.state, context.ranks
        )
