"""Speed benchmarks at toy size, so none of them rots; their figures are never asserted (timings
are not pass/fail), only that each runs and writes what it says it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_transport_benchmark_echoes_every_mode_at_toy_size(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "transport.py"),
            "--sizes",
            "1",
            "--reps",
            "2",
            "--runs",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = json.loads((tmp_path / "transport.json").read_text())
    assert result["megabytes"] == 1 and len(result["runs"]) == 2
    for run in result["runs"]:
        assert set(run["MB_per_s"]) == {"raw", "tensor float32", "tensor bfloat16"}
        assert all(len(s) == 2 and min(s) > 0 for s in run["seconds"].values())
    for mode, rate in result["MB_per_s"].items():  # the runs' median: with two runs, between them
        per_run = [run["MB_per_s"][mode] for run in result["runs"]]
        assert min(per_run) <= rate <= max(per_run)
    ratio = result["tensor_float32_over_raw"]
    assert ratio["per_run"] == [run["tensor_float32_over_raw"] for run in result["runs"]]
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert (tmp_path / "transport.png").stat().st_size > 0 and "f32 / raw" in done.stdout


def run_benchmark(script: str, *args: str, env=None, expect=0) -> subprocess.CompletedProcess:
    """Runs benchmarks/SCRIPT; its exit code must be `expect` (None: checked by the caller)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=900, env=env
    )
    assert expect is None or done.returncode == expect, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def written(out: Path, name: str):
    """The benchmark's JSON, after checking its PNG is there too."""
    assert (out / f"{name}.png").stat().st_size > 0
    return json.loads((out / f"{name}.json").read_text())


def test_the_step_overhead_benchmark_splits_a_tiny_step_and_counts_its_wire_bytes(tmp_path):
    run_benchmark(
        "step_overhead.py",
        "--models",
        "tiny",
        "--methods",
        "dga,lga",
        "--runs",
        "1",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--out",
        str(tmp_path),
    )
    model, lga = written(tmp_path, "step_overhead")
    assert (model["model"], model["method"], model["batch"], lga["method"]) == ("tiny", "dga", 8, "lga")
    assert len(model["runs"]) == 1
    # LGA sends its deep prompts on top of DGA's tensors, every step
    assert lga["runs"][0]["rows"][1]["up_bytes"] > model["runs"][0]["rows"][1]["up_bytes"]
    wires = [f"remote {dtype} {image}" for image in ("pixels", "frugal") for dtype in ("float32", "bfloat16")]
    assert set(model["across_runs"]) == {"in-process", *wires}
    remote = {r["variant"]: r for r in model["runs"][0]["rows"][1:]}
    # Pixel mode: the adapter's output (8, 3, 32, 32) up, its gradient down, at the wire's dtype.
    pixels = 8 * 3 * 32 * 32
    f32, bf16 = remote["remote float32 pixels"], remote["remote bfloat16 pixels"]
    assert f32["up_bytes"] >= 4 * pixels and bf16["up_bytes"] >= 2 * pixels and f32["bytes_ratio"] == 1.0
    assert f32["up_bytes"] == 2 * bf16["up_bytes"]
    # Frugal: one byte a pixel up, no pixel-shaped gradient down (the adapter's 443 parameters'
    # gradients, the text inputs' and the embeddings' at most).
    frugal = remote["remote float32 frugal"]
    assert pixels <= frugal["up_bytes"] < f32["up_bytes"] / 2 and frugal["down_bytes"] < pixels
    assert frugal["bytes_ratio"] < 0.3 and remote["remote bfloat16 frugal"]["bytes_ratio"] < frugal["bytes_ratio"]
    # TCP carries the tensors and more (frames, headers), never less.
    assert all(r["wire_over_minimum"] is None or r["wire_over_minimum"] > 1.0 for r in remote.values())


def test_the_concurrent_clients_benchmark_measures_rate_and_memory_both_ways(tmp_path):
    run_benchmark(
        "concurrent_clients.py",
        "--model",
        "graytune-tiny",
        "--clients",
        "2",
        "--batch",
        "2",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
    )
    results = written(tmp_path, "concurrent_clients")
    assert [r["merge_batches"] for r in results] == [True, False]
    for r in results:
        assert [row["clients"] for row in r["rows"]] == [2]
        assert all(row["samples_per_s"] > 0 and row["server_peak_rss"] > 0 for row in r["rows"])


def test_the_soak_benchmark_samples_a_short_run(tmp_path):
    done = run_benchmark(
        "soak.py",
        "--clients",
        "1",
        "--minutes",
        "0.25",
        "--warmup-seconds",
        "3",
        "--interval",
        "0.5",
        "--batch",
        "2",
        "--out",
        str(tmp_path),
        expect=None,
    )
    result = written(tmp_path, "soak")
    assert result["summary"]["failed_clients"] == [] and len(result["samples"]) >= 10
    assert "target < 5%" in done.stdout and done.returncode == (0 if result["summary"]["met_target"] else 1)


def test_the_gradient_protection_benchmark_trains_once_per_key(cache_dir, tmp_path):
    run_benchmark(
        "gradient_protection.py",
        "--keys",
        "none,clip 0.1x",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path),
        env={**os.environ, "GRAYTUNE_CACHE": str(cache_dir)},
    )
    result = written(tmp_path, "gradient_protection")
    assert set(result["keys"]) == {"none", "clip 0.1x"} and result["keys"]["clip 0.1x"]["clip"] > 0
    # The unprotected key keeps all of its own gain, or there was none to keep in two steps.
    assert result["keys"]["none"]["gain_kept"]["image_to_text_R@1"] in (1.0, None)


def test_the_fuzz_benchmark_counts_statuses_and_checks_health(tmp_path):
    run_benchmark("fuzz.py", "--cases", "40", "--out", str(tmp_path))
    result = written(tmp_path, "fuzz")
    assert result["cases"] >= 30 and sum(result["statuses"].values()) == result["cases"]
    assert result["unknown_or_internal"] == 0 and result["violations"] == [] and result["health"] == "SERVING"


def test_the_abuse_benchmark_measures_a_victim_under_each_case(tmp_path):
    run_benchmark("abuse.py", "--seconds", "2", "--cases", "baseline,many-streams,tokenizer", "--out", str(tmp_path))
    result = written(tmp_path, "abuse")
    assert list(result["cases"]) == ["baseline", "many-streams", "tokenizer"]
    for case in result["cases"].values():
        assert case["calls"] > 0 and case["p50_ms"] <= case["p99_ms"]
        assert case["failures"] == 0 and case["unhealthy_checks"] == 0 and case["rss_after_mib"] > 0


def test_the_balancer_benchmark_times_envoy_against_direct_and_counts_replicas(tmp_path):
    args = ("--model", "graytune-tiny", "--batch", "4", "--steps", "2", "--runs", "2", "--clients", "2")
    run_benchmark("balancer.py", *args, "--replicas", "1,2", "--out", str(tmp_path))
    result = written(tmp_path, "balancer")
    runs = result["step"]["runs"]
    assert len(runs) == 2 and all(r["ratio"] == r["median_s"]["envoy"] / r["median_s"]["direct"] for r in runs)
    assert min(r["ratio"] for r in runs) <= result["step"]["ratio"] <= max(r["ratio"] for r in runs)
    assert [row["replicas"] for row in result["throughput"]["rows"]] == [1, 2]
    assert all(row["samples_per_s"] > 0 for row in result["throughput"]["rows"])


def test_the_suite_command_names_real_scripts_and_refuses_unknown_parts():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert all((BENCHMARKS / script[0]).is_file() for _, _, script in run_all.SUITE)
    done = run_benchmark("run_all.py", "--only", "speed,nonsense", "--skip", "fuzz,nothing", expect=2)
    assert "['nonsense', 'nothing']" in done.stderr


def test_the_memory_benchmark_weighs_a_methods_modules_against_the_backbone(tmp_path):
    run_benchmark("memory.py", "--models", "graytune-tiny", "--methods", "graybox-dga", "--out", str(tmp_path))
    [result] = written(tmp_path, "memory")
    dga, backbone = result["methods"]["graybox-dga"], result["backbone"]
    # graytune-tiny's DGA modules: a 2-layer 8-channel 3x3 pixel adapter, the text shift and one
    # extra token (width 128), two output adapters (embed 128) and the logit scale.
    pixel_adapter = (3 * 8 * 9 + 8) + (8 * 3 * 9 + 3)
    assert dga["parameters"] == pixel_adapter + 2 * 128 + 2 * (128 * 128 + 128) + 1
    assert dga["file_bytes"] > 4 * dga["parameters"] and backbone["parameters"] > 100 * dga["parameters"]
    assert dga["rss"] > 0 and backbone["rss"] > 0 and backbone["server_rss"] > 0


def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    """scripts/gpu_check.sh --dry-run: every step of the GPU check, small, on the CPU."""
    done = subprocess.run(
        ["bash", str(BENCHMARKS.parent / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == [
        "gradients on cpu, fp32",
        "gradients on cpu, amp_bf16",
        "step overhead",
        "concurrent clients",
        "upload overlap and peak memory",
    ]
    assert all(s["ok"] for s in steps.values()) and "2 passed" in steps["gradients on cpu, fp32"]["output_end"]
    measured = steps["upload overlap and peak memory"]
    assert {(r["wire"], r["clients"]) for r in measured["rows"]} == {
        (w, c) for w in ("pixels", "frugal") for c in (1, 2)
    }
    assert all(0 < r["device_busy"] <= 1.05 for r in measured["rows"]) and measured["peak_device_memory_bytes"] > 0
    (case,) = written(tmp_path, "step_overhead")
    assert {"remote float32 frugal", "remote bfloat16 frugal"} <= set(case["across_runs"])
    assert written(tmp_path, "concurrent_clients")
