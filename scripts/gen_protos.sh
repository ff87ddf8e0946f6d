#!/usr/bin/env bash
# Regenerates the committed Python stubs from protos/graytune/v1/*.proto.
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: protos/, i.e. in place)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-protos}
python -m grpc_tools.protoc -I protos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protos/graytune/v1/*.proto
