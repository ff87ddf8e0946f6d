"""`graytune plot`: a run's metrics.jsonl as an image, written atomically, with clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from graytune.client import plot

RETRIEVAL = ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5")


def write_run(run_dir, steps=30, evals=(0, 15, 30), task="retrieval", metrics=RETRIEVAL, method="dga"):
    """A metrics.jsonl as `graytune train` writes it: the run record, zero-shot, training steps
    and evaluations (CraFT's counting queries, with its fitness and sigma instead of a rate)."""
    run_dir.mkdir(parents=True)
    craft = method == "craft"
    records = [{"kind": "run", "step": 0, "task": task, "method": method}]
    records += [
        {
            "kind": "zero_shot" if s == 0 else "eval",
            "step": s,
            **({"queries": 8 * s} if craft and s else {}),
            **{key: 0.2 + s / 100 for key in metrics},
            "per_class_accuracy": {"a": 0.5},
        }
        for s in evals
    ]
    for s in range(1, steps + 1):
        trained = {"fitness": 10 - s / 10, "fitness_mean": 12 - s / 10, "sigma": 0.5, "queries": 8 * s}
        records.append({"kind": "train", "step": s, "loss": 4.0 - s / 10, **(trained if craft else {"lr": 1e-3})})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def panels(fig) -> dict:
    """{panel title: {line label: (x, y)}} of a figure's axes (unlabelled lines left out)."""
    return {
        ax.get_title(): {
            line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines()
            if not line.get_label().startswith("_")
        }
        for ax in fig.axes
    }


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "graytune.client.cli", "plot", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plot_writes_an_image_beside_the_metrics(tmp_path):
    run = write_run(tmp_path / "run")
    result = cli(run)
    assert result.returncode == 0, result.stderr
    with Image.open(run / "metrics.png") as image:
        assert image.format == "PNG" and image.width > 1000
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_several_runs_need_an_output_file(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", steps=10, evals=(0, 10))
    refused = cli(a, b)
    assert refused.returncode == 1 and "--out: needed" in refused.stderr
    assert cli(a, b, "--out", tmp_path / "ab.png").returncode == 0
    assert (tmp_path / "ab.png").stat().st_size > 0


def test_a_directory_without_metrics_is_refused_clearly(tmp_path):
    result = cli(tmp_path)
    assert result.returncode == 1
    assert "no metrics" in result.stderr and "Traceback" not in result.stderr


def test_a_failed_save_leaves_no_image_behind(tmp_path, monkeypatch):
    import matplotlib.figure

    def fail_halfway(self, path, **kwargs):
        open(path, "wb").write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail_halfway)
    run = write_run(tmp_path / "run")
    with pytest.raises(OSError, match="disk full"):
        plot.plot_runs([run], run / "metrics.png")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_smooth_is_a_trailing_mean():
    assert plot.smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize(
    "task, logged, plotted",
    [
        ("classify", ("top1", "top5"), ["top1", "top5"]),
        (
            "sketch",
            ("sketch_to_photo_P@100", "sketch_to_photo_mAP@all"),
            ["sketch_to_photo_mAP@all", "sketch_to_photo_P@100"],
        ),
        (
            "video",
            ("text_to_video_R@5", "video_to_text_R@1", "video_to_text_R@5", "text_to_video_R@1", "video_to_text_R@10"),
            ["video_to_text_R@1", "video_to_text_R@5", "text_to_video_R@1", "text_to_video_R@5"],
        ),
        ("retrieval", RETRIEVAL, list(RETRIEVAL)),
    ],
)
def test_each_task_plots_its_own_metrics_at_every_evaluation(tmp_path, task, logged, plotted):
    run = plot.read_metrics(write_run(tmp_path / "run", task=task, metrics=logged))
    fig = plot.figure([run])
    [(title, lines)] = [(t, lines) for t, lines in panels(fig).items() if "validation" in t]
    assert title.startswith(f"{task} on the validation set")
    assert list(lines) == plotted
    assert lines[plotted[0]] == ([0, 15, 30], [0.2, 0.35, 0.5])


def test_a_craft_run_plots_its_fitness_and_sigma_against_queries(tmp_path):
    run = plot.read_metrics(
        write_run(
            tmp_path / "craft", steps=20, evals=(0, 20), task="classify", metrics=("top1", "top5"), method="craft"
        )
    )
    shown = panels(plot.figure([run]))
    assert not [t for t in shown if "learning rate" in t], "CraFT learns no rate it could plot"
    [fitness] = [lines for t, lines in shown.items() if "fitness" in t]
    assert fitness["craft"][0] == [8 * s for s in range(1, 21)]  # against queries, not generations
    assert [lines for t, lines in shown.items() if "sigma" in t][0]["craft"][1] == [0.5] * 20
    assert shown["classify on the validation set (step 0: zero-shot)"]["top1"][0] == [0, 160]


def test_runs_of_every_kind_share_one_figure(tmp_path):
    craft = write_run(tmp_path / "craft", task="classify", metrics=("top1", "top5"), method="craft")
    dga = write_run(tmp_path / "dga")
    result = cli(craft, dga, "--out", tmp_path / "both.png")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    fig = plot.figure([plot.read_metrics(craft), plot.read_metrics(dga)])
    shown = panels(fig)
    [evals] = [lines for t, lines in shown.items() if t.startswith("classify and retrieval")]
    assert "craft: top1" in evals and "dga: image_to_text_R@1" in evals
    assert set(shown["learning rate"]) == {"dga"} and {fig.axes[0].get_xlabel()} == {"step, or queries for CraFT"}
