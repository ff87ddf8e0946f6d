"""A training run's directory: what it holds, and whether a run may start, resume or is done.

metrics.jsonl   one JSON object per train step and per evaluation
config.json     the resolved configuration of the latest start or resume
checkpoints/    the newest checkpoints, `latest` naming the newest
adapter/        the final adapters, written when the last step is done
tensorboard/    with --report-to tensorboard: the metrics as event files
wandb/          with --report-to wandb: the W&B run's id (and its files, offline)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from graytune.client.data.files import write_text_atomically
from graytune.client.training import checkpoint

METRICS = "metrics.jsonl"
CONFIG = "config.json"
# What a run writes; a directory holding any of these is in use.
RUN_FILES = (METRICS, CONFIG, checkpoint.LATEST, "checkpoints", "adapter", "tensorboard", "wandb")


class RunDirInUse(FileExistsError):
    """A new run was pointed at a directory that holds another run."""


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    def in_use(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def checkpoint_step(self) -> int | None:
        """The step of the latest checkpoint (from its name, checkpoints/step_NNNNNNN); None before the first."""
        latest = checkpoint.latest_checkpoint(self.path)
        return None if latest is None else checkpoint.step_of(latest)

    def is_complete(self, steps: int) -> bool:
        return (self.path / "adapter").is_dir() and self.checkpoint_step() == steps

    def check_start(self, resume: bool, overwrite: bool) -> None:
        """Refuses to mix two runs in one directory, or to resume what is not there."""
        if resume and overwrite:
            raise ValueError("--resume and --overwrite: choose one")
        if resume and self.checkpoint_step() is None:
            raise FileNotFoundError(f"nothing to resume in {self.path}: no checkpoint written yet")
        if not resume and not overwrite and self.in_use():
            step = self.checkpoint_step()
            held = "no checkpoint yet" if step is None else f"a checkpoint at step {step}"
            raise RunDirInUse(
                f"{self.path} already holds a run ({held}): add --resume to "
                f"continue it, or --overwrite to delete it and start over"
            )

    def claim(self, overwrite: bool) -> None:
        """Creates the directory; with `overwrite`, first deletes the run it holds."""
        if overwrite:
            for name in RUN_FILES:
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict) -> None:
        write_text_atomically(self.path / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def records(self) -> list:
        path = self.path / METRICS
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def last_step(self) -> int:
        """The last train step logged (0 before the first)."""
        return max((r["step"] for r in self.records() if r["kind"] == "train"), default=0)

    def final_metrics(self) -> dict:
        """The last evaluation's metrics, or the last train loss when there was no evaluation."""
        records = self.records()
        evals = [r for r in records if r["kind"] == "eval"]
        if evals:
            return {**{k: v for k, v in evals[-1].items() if k not in ("step", "kind")}, **self.skipped_unreadable()}
        trains = [r for r in records if r["kind"] == "train"]
        return {"train/loss": trains[-1]["loss"], **self.skipped_unreadable()} if trains else {}

    def skipped_unreadable(self) -> dict[str, int]:
        """With --skip-unreadable: the training samples left out over the whole run."""
        counts = [r["skipped_unreadable"] for r in self.records() if "skipped_unreadable" in r]
        return {"skipped_unreadable": sum(counts)} if counts else {}

    def resume_hint(self) -> str:
        step = self.checkpoint_step()
        return (
            "nothing was checkpointed yet: start it again with --overwrite"
            if step is None
            else f"resume with --resume (continues from the checkpoint at step {step})"
        )


class MetricsLog:
    """metrics.jsonl: one JSON object per train step or evaluation; `reporters` (objects with
    write(record) and close(), e.g. TensorBoardWriter) get every record too."""

    def __init__(self, run_dir: Path | None, reporters: tuple = ()):
        """`run_dir` None: records are discarded (a run's other processes than rank 0)."""
        self.path = None if run_dir is None else Path(run_dir) / METRICS
        self.reporters = reporters

    @classmethod
    def discarding(cls) -> MetricsLog:
        return cls(None)

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        for reporter in self.reporters:
            reporter.write(record)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()

    def truncate_after(self, step: int) -> None:
        """Drops records past a resumed checkpoint, so a resumed run logs each step once."""
        if self.path is not None and self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            write_text_atomically(self.path, "".join(line + "\n" for line in lines))
