"""Where every benchmark's results go: OUT/<name>.json and OUT/<name>.png, each written
atomically (a crashed or interrupted run never leaves half a file over the last good one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from graytune.client.data.files import write_file_atomically, write_text_atomically  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"  # benchmarks/results: the committed latest


def save_results(out: Path, name: str, results, draw: Callable[[], plt.Figure]) -> Path:
    """Writes OUT/name.json (`results`) and OUT/name.png (the figure `draw()` returns) -> the JSON's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / f"{name}.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    fig = draw()
    try:
        write_file_atomically(out / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=120))
    finally:
        plt.close(fig)
    return out / f"{name}.json"
