#!/usr/bin/env bash
# The whole test suite: real server processes on loopback, in GRAYTUNE_TEST_WORKERS pytest-xdist
# workers (default 2), each test file in one worker so its module's server starts once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q --durations=10 -n "${GRAYTUNE_TEST_WORKERS:-2}" --dist loadfile \
  --no-loadscope-reorder "$@"  # in conftest.py's order: the longest files first
