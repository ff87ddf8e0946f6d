"""The whole CPU suite in one command: every benchmark at the scale of a 2-core machine, one
after another (they would measure each other if run together), each writing its JSON and PNG
into --out and its summary to stdout, then a table of what ran, its exit code and its minutes.

    python benchmarks/run_all.py                       # everything (see benchmarks/README.md)
    python benchmarks/run_all.py --only speed          # the parts named: accuracy, speed, robustness
    python benchmarks/run_all.py --skip accuracy_table,soak

A benchmark that fails does not stop the rest; the exit code is 1 when any failed. The log of
each run is kept in OUT/logs/<name>.log.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from evidence.output import RESULTS

HERE = Path(__file__).resolve().parent
# (name, part, script and its CPU-scale arguments); --out is added to each.
SUITE = (
    ("owner_model", "accuracy", ["owner_model.py"]),  # cached: minutes the first time only
    ("accuracy_table", "accuracy", ["accuracy_table.py"]),
    ("transport", "speed", ["transport.py"]),
    ("step_overhead", "speed", ["step_overhead.py", "--models", "small-224", "--runs", "3"]),
    ("concurrent_clients", "speed", ["concurrent_clients.py"]),
    ("balancer", "speed", ["balancer.py"]),
    ("memory", "speed", ["memory.py"]),
    ("craft_queries", "speed", ["craft_queries.py"]),
    ("fuzz", "robustness", ["fuzz.py", "--cases", "2000"]),
    ("soak", "robustness", ["soak.py", "--minutes", "5"]),
    ("abuse", "robustness", ["abuse.py"]),
    ("gradient_protection", "robustness", ["gradient_protection.py"]),
)
WRITES_NO_RESULTS = {"owner_model"}  # prints its report; the weights go to the cache


def run(name: str, argv: list, out: Path) -> tuple:
    """Runs one benchmark, its output both to this terminal and to OUT/logs/NAME.log -> (exit code, minutes)."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(HERE / argv[0]), *argv[1:]] + (
        [] if name in WRITES_NO_RESULTS else ["--out", str(out)]
    )
    print(f"\n=== {name}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with open(out / "logs" / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE)
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
    return process.wait(), (time.monotonic() - started) / 60


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", help="parts to run, comma-separated: accuracy, speed, robustness")
    p.add_argument("--skip", default="", help="benchmarks to leave out, comma-separated")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    parts, skipped = args.only and set(args.only.split(",")), set(filter(None, args.skip.split(",")))
    unknown = (parts or set()) - {part for _, part, _ in SUITE} | skipped - {name for name, _, _ in SUITE}
    if unknown:
        p.error(f"unknown parts or benchmarks: {sorted(unknown)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    done = [
        (name, *run(name, script, args.out))
        for name, part, script in SUITE
        if (not parts or part in parts) and name not in skipped
    ]
    print(f"\n{'benchmark':<22}{'exit':>5}{'minutes':>9}")
    for name, code, minutes in done:
        print(f"{name:<22}{code:>5}{minutes:>9.1f}")
    print(f"{'total':<22}{'':>5}{sum(m for _, _, m in done):>9.1f}\nresults in {args.out}, logs in {args.out / 'logs'}")
    return int(any(code for _, code, _ in done))


if __name__ == "__main__":
    sys.exit(main())
