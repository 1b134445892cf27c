#!/usr/bin/env bash
# One script for the H200 (device tool): full-size SDXL LoRA training speed and memory.
#   bench/gpu.sh            batch 1 and 4 x checkpointing on/off at 1024², 20 steps each, then
#                           the same cases' lint estimate and exact simulation (CPU)
#   bench/gpu.sh --levers   each speed lever alone (channels_last, torch.compile, fused AdamW)
#   bench/gpu.sh --dry-run  tiny model on the CPU, 1 step: checks that the script runs
# Builds the SDXL architecture with random weights: nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
exec "$PY" bench/gpu_train.py "$@"
