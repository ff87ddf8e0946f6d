#!/usr/bin/env bash
# The whole test suite (real server processes on loopback; 33 minutes on 2 idle cores, 2026-12-06).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q --durations=10 "$@"
