"""Speed benchmarks at toy size, so none of them rots; their figures are never asserted (timings
are not pass/fail), only that each runs and writes what it says it writes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_transport_benchmark_echoes_every_mode_at_toy_size(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "transport.py"), "--sizes", "1", "--reps", "2",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = json.loads((tmp_path / "transport.json").read_text())
    assert result["megabytes"] == 1 and set(result["MB_per_s"]) == {"raw", "tensor float32", "tensor bfloat16"}
    assert all(len(s) == 2 and min(s) > 0 for s in result["seconds"].values())
    assert (tmp_path / "transport.png").stat().st_size > 0 and "f32 / raw" in done.stdout
