"""The customer's install needs no OpenCLIP, and the main job runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys

CLIENT_MODULES = [
    "graytune.client",
    "graytune.client.cli",
    "graytune.client.training.loop",
    "graytune.client.training.checkpoint",
    "graytune.client.transport.remote",
    "graytune.client.tasks.retrieval.task",
    "graytune.client.demo",
]


def test_client_imports_neither_open_clip_nor_the_server():
    code = (
        "import importlib, sys\n"
        f"for m in {CLIENT_MODULES!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('open_clip', 'graytune.server', 'torchvision'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_prints_zero_shot_and_fine_tuned_metrics(pretrained_server, cache_dir, tmp_path):
    """`graytune demo`, the README's main job, on the weights the session already built."""
    result = subprocess.run(
        [sys.executable, "-m", "graytune.client.cli", "demo", "--steps", "20", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "GRAYTUNE_CACHE": str(cache_dir)},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in result.stdout.splitlines()
        if line.startswith(("image_to_text", "text_to_image"))
    }
    assert set(rows) >= {"image_to_text_R@1", "text_to_image_R@5"}
    assert all(len(v) == 2 and all(0 <= float(x) for x in v) for v in rows.values())
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert f"plot:    {tmp_path / 'run' / 'metrics.png'}" in result.stdout


def test_every_package_folder_is_listed_in_pyproject():
    """A package missing from pyproject's list is left out of a wheel (an editable install hides it)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("graytune", *init.parent.relative_to(root).parts))
        for side in ("client", "server")
        for init in (root / side).rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)
