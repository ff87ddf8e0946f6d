"""Plots of a run's metrics.jsonl: training loss and learning rate per step, and the retrieval
metrics of every evaluation (step 0: zero-shot).

    graytune plot runs/my-task                  # writes runs/my-task/metrics.png
    graytune plot runs/a runs/b --out compare.png   # several runs, one figure

Needs matplotlib (`pip install 'graytune[plot]'`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from graytune.client.data.files import write_file_atomically
from graytune.client.training.run_dir import METRICS, RunDir

RECALLS = ("image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@5", "text_to_image_R@5")


def read_metrics(run_dir: Path) -> dict[str, list[dict]]:
    """{"train": [...], "eval": [... zero-shot first]} from a run directory's metrics.jsonl."""
    run = RunDir(run_dir)
    path = run.path / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics; is {run_dir} a `graytune train` run directory?")
    records = run.records()
    train = [r for r in records if r["kind"] == "train"]
    evals = sorted((r for r in records if r["kind"] in ("zero_shot", "eval")), key=lambda r: r["step"])
    if not train and not evals:
        raise ValueError(f"{path}: no training or evaluation records yet")
    return {"train": train, "eval": evals}


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over `window` steps: the loss of one batch is noisy."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """One figure: loss, learning rate and recall curves of each run; written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    runs = {Path(d).name or str(d): read_metrics(d) for d in run_dirs}
    fig, (loss_ax, lr_ax, recall_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, metrics in runs.items():
        steps = [r["step"] for r in metrics["train"]]
        losses = [r["loss"] for r in metrics["train"]]
        (line,) = loss_ax.plot(steps, losses, alpha=0.25)
        loss_ax.plot(steps, smooth(losses, 20), color=line.get_color(), label=name)
        lr_ax.plot(steps, [r["lr"] for r in metrics["train"]], label=name)
        for key, style in zip(RECALLS, ("-o", "-s", "--o", "--s")):
            evals = [r for r in metrics["eval"] if key in r]
            # One run: a colour per metric. Several: a colour per run, a line style per metric.
            label, color = (key, None) if len(runs) == 1 else (f"{name}: {key}", line.get_color())
            recall_ax.plot([r["step"] for r in evals], [r[key] for r in evals], style, label=label, color=color)
    loss_ax.set(title="training loss (line: mean of 20 steps)", xlabel="step", ylabel="loss")
    lr_ax.set(title="learning rate", xlabel="step")
    recall_ax.set(
        title="retrieval on the validation set (step 0: zero-shot)", xlabel="step", ylabel="recall", ylim=(0, 1.02)
    )
    for ax in (loss_ax, lr_ax, recall_ax):
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:  # a crash never leaves half an image under the final name
        write_file_atomically(out, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
    return out
