"""The documentation site builds with --strict (no broken link or anchor, no page outside nav),
the benchmark results page is generated from benchmarks/results/, and the README stays short
with its tested examples the same as the customer guide's."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CUSTOMER_GUIDE = ROOT / "docs" / "customer-guide.md"
RESULTS = ROOT / "benchmarks" / "results"


def test_the_site_builds_strict_with_the_generated_results_page(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = site / "benchmarks" / "results" / "index.html"
    assert page.is_file()
    html = page.read_text(encoding="utf-8")
    folders = {p.parent.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file()}
    for folder in folders - {"."}:
        assert f"benchmarks/results/{folder}/" in html, folder
    for image in RESULTS.glob("*.png"):  # each plot copied into the site, beside the page
        assert (site / "benchmarks" / "results" / image.name).is_file(), image.name
        assert f'src="{image.name}"' in html, image.name
    assert (site / "changelog" / "index.html").is_file()
    assert not (site / "hooks").exists()


def _results_page_module():
    spec = importlib.util.spec_from_file_location("results_page", ROOT / "docs" / "hooks" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_results_page_renders_summaries_json_tables_and_plots(tmp_path):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    (results / "speed.json").write_text(
        json.dumps(
            {
                "cases": {"baseline": {"p50_ms": 8.5, "calls": 1988}, "flood": {"p50_ms": 38.25, "calls": 423}},
                "seconds": 20.0,
                "curve": {"queries": [0, 400], "top1": [0.15, 0.2]},
            }
        )
    )
    (results / "speed.png").write_bytes(b"\x89PNG")
    (results / "table.md").write_text("# Table\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (results / "table.json").write_text("{}")
    for seed in range(13):  # more than MANY: one table, a row per file
        (results / "runs" / f"DGA-seed{seed}.json").write_text(json.dumps({"test": 0.5 + seed / 100}))
    page = _results_page_module().results_page(results)
    assert "## `benchmarks/results/`" in page and "## `benchmarks/results/runs/`" in page
    assert "| baseline | 8.5 | 1988 |" in page  # a dict of records: a row each
    assert "| seconds | 20 |" in page  # scalars as fields
    assert "| 400 | 0.2 |" in page  # a dict of equal-length lists as columns
    assert "![speed](results/speed.png)" in page
    assert "#### Table" in page and "| 1 | 2 |" in page  # a Markdown summary included, under the file's heading
    assert '??? note "13 files"' in page and "    | DGA-seed12 | 0.62 |" in page


def _block(text: str, after: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", text[text.index(after) :], re.DOTALL)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def test_the_readme_is_short_and_its_tested_examples_are_the_customer_guides():
    readme = README.read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    assert readme.startswith("# graytune\n\n```sh\nbash scripts/demo.sh\nbash scripts/test.sh\n```\n")
    guide = CUSTOMER_GUIDE.read_text(encoding="utf-8")
    # tests/test_readme.py runs the README's copies; the guide's must be the same text.
    assert _block(guide, "The same from Python", "python") == _block(readme, "The same from Python", "python")
    assert _block(guide, "One command per task", "sh") == _block(readme, "One command per task", "sh")
