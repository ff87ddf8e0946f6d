"""`--report-to`: metrics.jsonl's records also as scalars in TensorBoard or Weights & Biases.

    tensorboard   RUN_DIR/tensorboard/ event files (`pip install 'graytune[tensorboard]'`); a
                  resumed run purges the events past its checkpoint, as metrics.jsonl drops its
                  records.
    wandb         one W&B run per run directory, its id kept in RUN_DIR/wandb/run_id so that a
                  resume continues it (`pip install 'graytune[wandb]'`); the W&B project is
                  $WANDB_PROJECT, else "graytune". WANDB_MODE=offline writes it under RUN_DIR/wandb/
                  for a later `wandb sync`.

Tags: train/loss, train/lr, train/logit_scale, val/<metric>, val/per_class/<class>,
oracle/<Method>_calls|_samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from graytune.client.data.files import write_text_atomically

REPORTERS = {"tensorboard": "TensorBoard", "wandb": "Weights & Biases"}


class Reporter(Protocol):
    def write(self, record: dict) -> None: ...
    def close(self) -> None: ...


def scalars(record: dict) -> Iterator[tuple[str, float]]:
    """(tag, value) of a metrics.jsonl record's numbers; nested dicts become tag paths."""
    section = {"train": "train", "eval": "val", "zero_shot": "val"}.get(record["kind"])
    if section is None:
        return
    for key, value in record.items():
        if key in ("step", "kind"):
            continue
        tag = key if key.startswith("oracle/") else f"{section}/{key}"
        if isinstance(value, dict):
            yield from ((f"{section}/{key.replace('_accuracy', '')}/{name}", float(v)) for name, v in value.items())
        elif isinstance(value, (int, float)):
            yield tag, float(value)


def _imported(name: str) -> Any:
    """The module `--report-to NAME` writes with; ModuleNotFoundError naming the extra if absent."""
    try:
        if name == "tensorboard":
            from torch.utils import tensorboard

            return tensorboard
        import wandb

        return wandb
    except ImportError:
        raise ModuleNotFoundError(
            f"--report-to {name} needs {REPORTERS[name]}: pip install 'graytune[{name}]'"
        ) from None


def _check_wandb_login(wandb: Any) -> None:
    """A W&B run online needs credentials: refused here, before the run directory is touched,
    rather than by wandb.init's traceback once the run has started."""
    if os.environ.get("WANDB_MODE", "online") in ("offline", "disabled", "dryrun"):
        return
    if not wandb.login(prompt=False):
        raise ValueError(
            "--report-to wandb: no W&B credentials here; run `wandb login` (or set WANDB_API_KEY), "
            "or set WANDB_MODE=offline to keep the W&B run in OUTPUT_DIR/wandb for a later `wandb sync`"
        )


def reporters(report_to: tuple[str, ...], run_dir: Path, resumed_step: int) -> Callable[[dict], tuple[Reporter, ...]]:
    """What opens the reporters `report_to` names, given the run's resolved config (checked, and
    their modules imported, before the run directory is touched)."""
    unknown = sorted(set(report_to) - set(REPORTERS))
    if unknown:
        raise ValueError(f"--report-to: unknown {', '.join(unknown)} (known: {', '.join(REPORTERS)})")
    modules = {name: _imported(name) for name in dict.fromkeys(report_to)}
    if "wandb" in modules:
        _check_wandb_login(modules["wandb"])
    kinds: dict[str, type[TensorBoardWriter | WandbWriter]] = {"tensorboard": TensorBoardWriter, "wandb": WandbWriter}
    return lambda config: tuple(
        kinds[name](module, Path(run_dir), resumed_step, config) for name, module in modules.items()
    )


class TensorBoardWriter:
    def __init__(self, module: Any, run_dir: Path, resumed_step: int, config: dict):
        self.writer = module.SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step or None)

    def write(self, record: dict) -> None:
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, record["step"])
        if record["kind"] != "train":
            self.writer.flush()  # evaluations are few and worth seeing at once

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    """W&B's steps only increase: a resumed run logs nothing before the last step its W&B run
    holds (the values of those steps, which a resume computes again bit for bit, are there)."""

    def __init__(self, module: Any, run_dir: Path, resumed_step: int, config: dict):
        self.state = run_dir / "wandb" / "graytune.json"
        saved = json.loads(self.state.read_text()) if resumed_step and self.state.exists() else {}
        self.last_step = saved.get("last_step", 0)
        self.state.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.run = module.init(
                project=os.environ.get("WANDB_PROJECT", "graytune"),
                name=run_dir.name,
                id=saved.get("id"),  # None: a new W&B run
                resume="allow",
                dir=str(run_dir),
                config=config,
                settings=module.Settings(console="off"),  # stdout carries the run's result alone
            )
        except module.errors.Error as e:  # no network, a refused key: one line, not wandb's traceback
            raise ValueError(f"--report-to wandb: {e}") from None
        self._save()

    def write(self, record: dict) -> None:
        values = dict(scalars(record))
        if values and record["step"] >= self.last_step:  # a step's train and eval records merge
            self.run.log(values, step=record["step"])
            self.last_step = record["step"]

    def close(self) -> None:
        self.run.finish()
        self._save()

    def _save(self) -> None:
        write_text_atomically(self.state, json.dumps({"id": self.run.id, "last_step": self.last_step}) + "\n")
