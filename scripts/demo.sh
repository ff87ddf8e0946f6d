#!/usr/bin/env bash
# The main job: a local owner server, a short gray-box fine-tune over gRPC, before/after metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/graytune demo "$@"
