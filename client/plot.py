"""Plots of runs' metrics.jsonl, for every task and method: the training curves the method logs
(loss; the learning rate, or CraFT's fitness and search step size) and the task's own metrics at
every evaluation (step 0: zero-shot).

    graytune plot runs/my-task                  # writes runs/my-task/metrics.png
    graytune plot runs/a runs/b --out compare.png   # several runs, one figure, whatever their kinds

Needs matplotlib (`pip install 'graytune[plot]'`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from graytune.client.data.files import write_file_atomically
from graytune.client.tasks import task_class
from graytune.client.training.run_dir import METRICS, RunDir

# The training panels: (a key of the train records, its title); drawn where some run logs the key.
TRAIN_PANELS = (
    ("loss", "training loss (line: mean of 20)"),
    ("lr", "learning rate"),
    ("fitness", "CraFT: best prompt's fitness (dashed: population mean)"),
    ("sigma", "CraFT: search step size (sigma)"),
)
STYLES = ("-o", "-s", "--o", "--s")


@dataclass
class RunMetrics:
    """One run's records: what it trained, and its curves against its own unit of progress."""

    name: str
    task: str
    method: str
    train: list[dict]
    evals: list[dict]  # zero-shot first

    @property
    def unit(self) -> str:
        return "queries" if self.method == "craft" else "step"  # CraFT counts oracle queries

    def x(self, record: dict) -> float:
        return record.get(self.unit, record["step"])  # zero-shot: 0 of either

    def metrics(self) -> list[str]:
        """The task's metrics this run's evaluations hold, in the task's order."""
        logged = {k for r in self.evals for k, v in r.items() if isinstance(v, float | int)}
        task = task_class(self.task)
        wanted = task.plotted or task.headline
        return [
            k
            for w in wanted
            for k in sorted(logged, key=_natural)
            if k == w or (w.endswith("@") and re.fullmatch(re.escape(w) + r"\d+", k))
        ]


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key))


def read_metrics(run_dir: Path) -> RunMetrics:
    """A run directory's metrics.jsonl, its task and method from the run's own record."""
    run = RunDir(run_dir)
    path = run.path / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics; is {run_dir} a `graytune train` run directory?")
    records = run.records()
    train = [r for r in records if r["kind"] == "train"]
    evals = sorted((r for r in records if r["kind"] in ("zero_shot", "eval")), key=lambda r: r["step"])
    if not train and not evals:
        raise ValueError(f"{path}: no training or evaluation records yet")
    started: dict = next((r for r in records if r["kind"] == "run"), {})
    # Runs from before the tasks existed logged no run record: all were retrieval, by gradient.
    task, method = started.get("task", "retrieval"), started.get("method", "dga")
    return RunMetrics(Path(run_dir).resolve().name, task, method, train, evals)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over `window` steps: the loss of one batch is noisy."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def figure(runs: Sequence[RunMetrics]):
    """The matplotlib Figure: a panel per training curve some run logs, then the evaluations."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [(key, title) for key, title in TRAIN_PANELS if any(key in r for run in runs for r in run.train)]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4.2), squeeze=False)
    train_axes, eval_ax = axes[0][:-1], axes[0][-1]
    colours = {run.name: f"C{i}" for i, run in enumerate(runs)}
    for (key, title), ax in zip(panels, train_axes):
        for run in runs:
            logged = [r for r in run.train if key in r]
            if not logged:
                continue
            xs, ys = [run.x(r) for r in logged], [r[key] for r in logged]
            if key == "loss":
                ax.plot(xs, ys, alpha=0.25, color=colours[run.name])
                ys = smooth(ys, 20)
            ax.plot(xs, ys, color=colours[run.name], label=run.name)
            if key == "fitness":
                ax.plot(xs, [r["fitness_mean"] for r in logged], "--", color=colours[run.name])
        ax.set(title=title, xlabel=_unit_label(runs))
    for run in runs:
        for key, style in zip(run.metrics(), itertools.cycle(STYLES)):
            evals = [r for r in run.evals if key in r]
            # One run: a colour per metric. Several: a colour per run, a line style per metric.
            label, colour = (key, None) if len(runs) == 1 else (f"{run.name}: {key}", colours[run.name])
            eval_ax.plot([run.x(r) for r in evals], [r[key] for r in evals], style, label=label, color=colour)
    tasks = sorted({run.task for run in runs})
    eval_ax.set(
        title=f"{' and '.join(tasks)} on the validation set (step 0: zero-shot)",
        xlabel=_unit_label(runs),
        ylabel="score",
        ylim=(0, 1.02),
    )
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _unit_label(runs: Sequence[RunMetrics]) -> str:
    units = sorted({run.unit for run in runs}, reverse=True)
    return "step, or queries for CraFT" if len(units) > 1 else units[0]


def plot_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """One figure of the runs' curves, written atomically to `out`."""
    import matplotlib.pyplot as plt

    fig = figure([read_metrics(Path(d)) for d in run_dirs])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:  # a crash never leaves half an image under the final name
        write_file_atomically(out, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
    return out
