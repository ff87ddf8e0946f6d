#!/usr/bin/env bash
# The whole test suite (real server processes on loopback; about 25 minutes on 2 idle cores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q --durations=10 "$@"
