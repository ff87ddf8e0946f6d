"""The gradient step of DGA, LGA and the linear probe: the task's loss, backward (through the
oracle to the input modules, where any learn), AdamW under a cosine schedule with warm-up."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

import torch
from torch import nn

from graytune.client.data.batches import step_batches, steps_per_epoch
from graytune.client.methods.base import ConfigT, Method, Model, Trainer, TrainingContext
from graytune.client.methods.distributed import Ranks, ShardedModel
from graytune.client.options import option

log = logging.getLogger("graytune.client")


DEFAULT_STEPS = 100


@dataclass(frozen=True)
class GradientOptions:
    """The optimiser's options, shared by the methods that train by gradient descent."""

    steps: int | None = option(None, f"optimiser steps in all, unless --epochs gives them (default: {DEFAULT_STEPS})")
    epochs: int | None = option(
        None, "passes over the training data, instead of --steps: steps = epochs × (samples // batch size)"
    )
    lr: float = option(1e-3, "peak learning rate of AdamW")
    wd: float = option(0.0, "weight decay of AdamW")
    warmup: int = option(10, "steps of linear warm-up before the cosine decay")
    workers: int = option(2, "DataLoader processes decoding and resizing batches ahead of the step (0: none)")
    skip_unreadable: bool = option(
        False,
        "train on without the training images or videos that cannot be read (each logged once, counted "
        "in metrics.jsonl and the final metrics) rather than stop the run; a validation set must be readable",
    )

    # What a resume may change, and why it may.
    FREE_ON_RESUME: ClassVar[dict[str, str]] = {
        "workers": "the same batches, made in more or fewer processes",
        "skip_unreadable": "it changes only batches holding a file that cannot be read, which stop a run without it",
    }

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"--steps {self.steps} and --epochs {self.epochs}: give one")
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} {value}: give 1 or more")

    def resolved(self, train_samples: int, batch_size: int) -> Self:
        """These options with --steps set: given, or --epochs' worth of `train_samples`."""
        if self.epochs is None:
            return dataclasses.replace(self, steps=self.steps or DEFAULT_STEPS)
        return dataclasses.replace(self, steps=self.epochs * steps_per_epoch(train_samples, batch_size), epochs=None)


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
        assert options.steps is not None, "options not resolved (GradientOptions.resolved)"
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(options.warmup, options.steps)
        )
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
        self.skipped: list[str] = []  # why each sample of the coming batch was left out
        self.logged: set[str] = set()

    def batches(self, first: int, end: int) -> Iterable[Any]:
        skipped = self.skipped.extend if self.options.skip_unreadable else None
        return step_batches(
            self.train_set, self.run.batch_size, self.run.seed, first, end, self.options.workers, skipped
        )

    def step(self, step: int, batch: Any) -> dict[str, float]:
        loss = train_step(self.loss_of, self.model, batch, self.optimizer, self.schedule, self.ranks)
        record = {"loss": loss.item(), "lr": float(self.schedule.get_last_lr()[0])}
        if self.options.skip_unreadable:
            record["skipped_unreadable"] = len(self.skipped)
            self.log_skipped()
        if hasattr(self.model, "logit_scale"):
            record["logit_scale"] = self.model.logit_scale().item()
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def log_skipped(self) -> None:
        """One line per file left out, the first time it is (a file recurs in every epoch)."""
        if self.ranks is None or self.ranks.main:
            for reason in self.skipped:
                if reason not in self.logged:
                    log.warning("skipped (--skip-unreadable): %s", reason)
                    self.logged.add(reason)
        self.skipped.clear()


GradientOptionsT = TypeVar("GradientOptionsT", bound=GradientOptions)


class GradientMethod(Method[ConfigT, GradientOptionsT]):
    """A method that trains its model by the GradientTrainer: `options` are GradientOptions."""

    def skips_unreadable(self, options: GradientOptionsT) -> bool:
        return options.skip_unreadable

    def resolved(self, options: GradientOptionsT, train_samples: int, batch_size: int) -> GradientOptionsT:
        done = options.resolved(train_samples, batch_size)
        if options.epochs is not None:
            assert done.steps is not None
            per_epoch = done.steps // options.epochs
            log.info(
                "--epochs %d: %d steps (%d of %d samples per epoch)", options.epochs, done.steps, per_epoch, batch_size
            )
        return done

    def steps(self, options: GradientOptionsT, task_options: Any) -> int | None:
        return None if options.epochs is not None else options.steps or DEFAULT_STEPS

    def trainer(self, model: Model, options: GradientOptionsT, context: TrainingContext) -> Trainer:
        return GradientTrainer(
            model, options, context.run, context.train_set, context.task.loss, context.state, context.ranks
        )
