"""`--report-to tensorboard`: metrics.jsonl's records also as TensorBoard scalars, beside it.

    RUN_DIR/tensorboard/   train/loss, train/lr, train/logit_scale, val/<metric>,
                           val/per_class/<class>, oracle/<Method>_calls|_samples

Needs the tensorboard package (`pip install 'graytune[tensorboard]'`). A resumed run purges the
events past its checkpoint, as metrics.jsonl drops its records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

REPORTERS = ("tensorboard",)


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


def summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ModuleNotFoundError(
            "--report-to tensorboard needs TensorBoard: pip install 'graytune[tensorboard]'"
        ) from None
    return SummaryWriter


def reporters(
    report_to: tuple[str, ...], run_dir: Path, resumed_step: int
) -> Callable[[], tuple[TensorBoardWriter, ...]]:
    """What opens the writers `report_to` names (checked before the run directory is touched)."""
    unknown = sorted(set(report_to) - set(REPORTERS))
    if unknown:
        raise ValueError(f"--report-to: unknown {', '.join(unknown)} (known: {', '.join(REPORTERS)})")
    if "tensorboard" in report_to:
        summary_writer_class()
    return lambda: (TensorBoardWriter(run_dir, resumed_step),) if "tensorboard" in report_to else ()


class TensorBoardWriter:
    def __init__(self, run_dir: Path, resumed_step: int = 0):
        self.writer = summary_writer_class()(str(Path(run_dir) / "tensorboard"), purge_step=resumed_step or None)

    def write(self, record: dict) -> None:
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, record["step"])
        if record["kind"] != "train":
            self.writer.flush()  # evaluations are few and worth seeing at once

    def close(self) -> None:
        self.writer.close()
