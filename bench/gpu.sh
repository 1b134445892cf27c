#!/usr/bin/env bash
# One script for the H200 (device tool): full-size SDXL LoRA training speed and memory.
#   bench/gpu.sh            batch 1 and 4 x checkpointing on/off at 1024², 10 steps after 3
#                           warm-up, each as lorafile's eager step, the diffusers example's
#                           peer step and lorafile's captured step (CUDA graph), with ratios
#                           to the peer; lorafile's rows get the lint estimate and the exact
#                           simulation (CPU). Budget: no case starts after 400 s (the whole
#                           run, wheel install included, fits 8 minutes on an H200)
#   bench/gpu.sh --regional regional torch.compile (each repeated block), without and with the
#                           captured step: a separate invocation (compile time is printed)
#   bench/gpu.sh --levers   each speed lever alone (channels_last, torch.compile, fused AdamW)
#   bench/gpu.sh --dry-run  tiny model on the CPU, 1 step: checks that the script runs
#   bench/gpu.sh --budget-s S   start no new case after S seconds (the device allows 600 s a call)
#   bench/gpu.sh --lora-layers  peft's LoRA Linear against lorafile's fused one (how close? faster?)
#   bench/gpu.sh --tests    the CUDA-only tests (tests/runtime/train/test_gpu.py: compile's CUDA graphs,
#                           pinned caches; tests/runtime/train/test_graph_gpu.py: capture,
#                           replay and resume of the static-buffer step)
# On the device machine: bash bench/gpu_wheels.sh here first, and carry .whl (see that script).
# Builds the SDXL architecture with random weights: nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# The device machine has torch but not these: install the wheels carried in .whl/ (made here by
# bench/gpu_wheels.sh). Where they import already (this project's .venv), nothing is installed.
if ! "$PY" -c 'import diffusers, bitsandbytes, pydantic, lark' 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu.sh: diffusers/bitsandbytes/pydantic/lark are missing; run bench/gpu_wheels.sh here and carry .whl" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # lorafile itself, uninstalled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
if [ "${1:-}" = "--lora-layers" ]; then  # peft's LoRA Linear against the fused one
  shift
  exec "$PY" bench/lora_layers.py --gpu "$@"
fi
if [ "${1:-}" = "--tests" ]; then
  shift
  exec "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests/runtime/train/test_gpu.py tests/runtime/train/test_graph_gpu.py "$@"
fi
case " $* " in
  *" --budget-s "*|*" --dry-run "*) exec "$PY" bench/gpu_train.py "$@" ;;
  *) exec "$PY" bench/gpu_train.py --budget-s 400 "$@" ;;
esac
