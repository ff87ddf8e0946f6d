"""`graytune plot`: a run's metrics.jsonl as an image, written atomically, with clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from graytune.client import plot


def write_run(run_dir, steps=30, evals=(0, 15, 30)):
    """A metrics.jsonl as `graytune train` writes it: train records, zero-shot, evaluations."""
    run_dir.mkdir(parents=True)
    records = [
        {"kind": "zero_shot" if s == 0 else "eval", "step": s, **{key: 0.2 + s / 100 for key in plot.RECALLS}}
        for s in evals
    ]
    records += [{"kind": "train", "step": s, "loss": 4.0 - s / 10, "lr": 1e-3} for s in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


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
