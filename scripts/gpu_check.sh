#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): on a machine with a CUDA GPU, gradients on cuda in
# fp32 and amp_bf16, step overhead of ViT-B-32 and ViT-L-14 in every wire mode, concurrent
# clients, upload overlap and peak device memory, under 8 minutes; results to
# benchmarks/results/gpu/. `--dry-run`: the same steps on the CPU, small (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
cd benchmarks
exec ../.venv/bin/python gpu_check.py "$@"
