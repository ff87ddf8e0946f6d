"""The evidence suite (benchmarks/): its owner model builds deterministically, its target domains
are the shifts they claim, its statistics are right, and the accuracy table runs end to end at
toy size against a real server (the smoke test that keeps the benchmark from rotting)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from evidence import domains  # noqa: E402
from evidence.table import chosen_on_val, interval, paired  # noqa: E402

TOY_BUILD = ["--steps", "2", "--batch-size", "32"]  # = accuracy_table.py's SMOKE_RECIPE


def run(script: str, *args: str, cache: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "GRAYTUNE_CACHE": str(cache)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def built(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout[: done.stdout.rindex("}") + 1])


@pytest.fixture(scope="module")
def toy_owner(tmp_path_factory):
    """A cache holding the toy owner model, and its build report."""
    cache = tmp_path_factory.mktemp("owner-cache")
    return cache, built(run("owner_model.py", *TOY_BUILD, cache=cache))


def test_the_owner_model_builds_the_same_weights_twice_and_then_comes_from_its_cache(toy_owner, tmp_path):
    cache, first = toy_owner
    again = built(run("owner_model.py", *TOY_BUILD, cache=tmp_path))  # another cache: trained again
    assert again["sha256"] == first["sha256"]
    weights = next(cache.glob("graytune-bench-owner-*.safetensors"))
    mtime = weights.stat().st_mtime_ns
    cached = built(run("owner_model.py", *TOY_BUILD, cache=cache))
    assert cached == first and weights.stat().st_mtime_ns == mtime  # not rebuilt
    assert set(first["zero_shot"]) == {
        "emoji_seen_top1 (912 classes)",
        "emoji_held_out_top1 (252 classes)",
        "mnist_held_out_top1 (500 digits)",
    }
    other_seed = built(run("owner_model.py", *TOY_BUILD, "--seed", "1", cache=tmp_path))
    assert other_seed["sha256"] != first["sha256"]


def test_held_out_emoji_are_never_pretrained_on_and_the_split_is_stable():
    from evidence.owner import is_held_out

    assert is_held_out("grinning face") == is_held_out("grinning face")  # a hash, not a draw
    data = domains.OwnerData.build(16)
    seen, seen_names = data.emoji_split(held_out=False)
    held, held_names = data.emoji_split(held_out=True)
    assert not set(seen_names) & set(held_names) and len(seen_names) + len(held_names) == len(data.emoji_names)
    assert 0.1 < len(held_names) / len(data.emoji_names) < 0.3  # about one in five
    digits, labels = data.digit_split(held_out=True)
    assert np.bincount(labels).tolist() == [50] * 10  # mnist_5k is sorted by label: every 10th is balanced


@pytest.mark.parametrize("shift", sorted(domains.PIXEL_SHIFTS))
def test_each_pixel_shift_changes_the_pixels_the_way_it_says(shift):
    glyph = Image.new("RGB", (48, 48), (255, 255, 255))
    glyph.paste((200, 40, 40), (12, 12, 36, 36))  # a red square on white
    before = np.asarray(glyph, dtype=np.int32)
    after = np.asarray(domains.PIXEL_SHIFTS[shift](glyph), dtype=np.int32)
    assert after.shape == before.shape
    if shift == "inverted":
        assert (after == 255 - before).all()
    elif shift == "greyscale":
        assert (after[..., 0] == after[..., 1]).all() and (after[..., 1] == after[..., 2]).all()
    elif shift == "colour-cast":
        assert after[..., 0].mean() < 0.5 * before[..., 0].mean() and after[..., 2].mean() > before[..., 2].mean() - 20
    elif shift == "blurred":
        assert np.abs(np.diff(after, axis=1)).max() < np.abs(np.diff(before, axis=1)).max() / 2
    else:  # edges: dark strokes at the square's border, white inside it and outside
        assert after[24, 24].min() > 200 and after[0, 0].min() > 200 and after[24, 10:14].max(axis=1).min() < 128


def test_confidence_intervals_are_students_t_over_paired_seeds():
    mean, low, high = interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / 3**0.5  # t(0.975, 2) * sd / sqrt(n)
    assert mean == pytest.approx(2.0) and (low, high) == pytest.approx((2 - half, 2 + half))
    assert interval([0.5]) == (0.5, None, None)
    runs = lambda *scores: {"lr": None, "runs": [{"test": s} for s in scores]}  # noqa: E731
    results = {
        "a": {"DGA": runs(0.5, 0.6), "LoRA": runs(0.4, 0.4)},
        "b": {"DGA": runs(0.2, 0.3), "LoRA": runs(0.3, 0.3)},
    }
    claim = paired(results, "DGA", "LoRA")
    # per seed, averaged over settings: seed 0 (10 - 10) / 2 = 0, seed 1 (20 + 0) / 2 = 10 points
    assert claim["mean"] == pytest.approx(5.0) and claim["settings"] == ["a", "b"]
    assert paired(results, "DGA", "LoRA", ["a"])["mean"] == pytest.approx(15.0)


def test_the_chosen_rate_is_written_short():
    assert chosen_on_val({"lr": 0.003, "steps": 400}) == "3e-3, 400"
    assert chosen_on_val({"lr": 0.1, "steps": 100}) == "1e-1, 100"


def test_the_accuracy_table_runs_every_row_at_toy_size(toy_owner, tmp_path):
    cache, _ = toy_owner
    done = run(
        "accuracy_table.py", "--smoke", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), cache=cache
    )
    report = json.loads((tmp_path / "out" / "accuracy_table.json").read_text())
    graybox = ["zero-shot", "output only", "input only", "DGA", "LGA", "full fine-tuning", "LoRA"]
    expected = {
        "classify/emoji-inverted": graybox + ["linear probe", "CraFT 16", "CraFT 32"],
        "retrieval/emoji-new": graybox,
        "sketch/emoji-sketch": graybox,
        "video/emoji-new-motion": graybox,
    }
    assert {s: sorted(rows) for s, rows in report["results"].items()} == {s: sorted(r) for s, r in expected.items()}
    for setting, rows in report["results"].items():
        for row, result in rows.items():
            assert all(0 <= run_["test"] <= 1 for run_ in result["runs"]), (setting, row)
    counts = {row: r["runs"][0]["trainable"] for row, r in report["results"]["classify/emoji-inverted"].items()}
    assert counts["zero-shot"] == 0 < counts["input only"] < counts["DGA"] < counts["LoRA"] < counts["full fine-tuning"]
    assert counts["output only"] < counts["DGA"] and counts["LGA"] > counts["DGA"]
    assert "| DGA |" in done.stdout and "| LoRA |" in done.stdout
    dga = report["results"]["classify/emoji-inverted"]["DGA"]  # the first setting's column of what val chose:
    chosen = done.stdout.split("chosen on val")[1].split("| DGA |")[1].split("|")[0].strip()
    assert chosen == chosen_on_val(dga) and f"{dga['steps']}" in chosen
    assert {c["over"] for c in report["claims"]} == {"all", "pixel shifts"}
    assert (tmp_path / "out" / "accuracy_table.png").stat().st_size > 0
    # Run again: every finished run's result is kept, so nothing trains a second time (an
    # interrupted table resumes). The run folders are deleted first: a run that trained again
    # would make its folder anew.
    runs = [p for p in (tmp_path / "work" / "runs").glob("*/*/*") if p.is_dir()]
    # Output/input only, DGA, LGA in each setting and the linear probe, each at its rate's steps
    # and the longer ones; CraFT once.
    assert len(runs) == 2 * (4 * 4 + 1) + 1
    for run_dir in runs:
        shutil.rmtree(run_dir)
    run(
        "accuracy_table.py",
        "--smoke",
        "--workdir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "again"),
        cache=cache,
    )
    assert not [p for p in (tmp_path / "work" / "runs").glob("*/*/*") if p.is_dir()]
    again = json.loads((tmp_path / "again" / "accuracy_table.json").read_text())
    assert again["results"] == report["results"]
