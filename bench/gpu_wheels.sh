#!/usr/bin/env bash
# Download, here, the wheels bench/gpu.sh needs on the H200 device machine, into .whl/.
# That machine has torch, transformers, peft, accelerate and safetensors (Python 3.12) but no
# network and no diffusers, bitsandbytes, pydantic or lark. Then carry them (device tool):
#   bash bench/gpu_wheels.sh      # once, here (about 52 MB: bitsandbytes is 43)
#   run(command="bash bench/gpu.sh --budget-s 420", carry=[".whl"], timeout_s=540)
# gpu.sh installs whatever lies in .whl/ into /tmp/site before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
# The names of the wheels the device lacks; each version is read from requirements/lock.txt,
# the file ./run and CI install from, so the GPU runs the versions the CPU suite tested. peft
# is on the device too, in a version nobody has read there; the trainer's fused LoRA layers
# (runtime/train/fused_lora.py) read peft's layer internals, so the locked peft travels too.
NAMES=(
  bitsandbytes diffusers importlib-metadata lark pydantic pydantic-core annotated-types
  typing-inspection tomli-w tomlkit toml peft
)
locked_pin() {  # NAME -> NAME==VERSION from the lock (names compared as PEP 503 normalises them)
  local want; want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  local pin name
  while read -r pin; do
    name=$(echo "${pin%%==*}" | tr 'A-Z_.' 'a-z--')
    if [ "$name" = "$want" ]; then echo "$pin"; return; fi
  done < <(grep -E '^[A-Za-z0-9_.-]+==' requirements/lock.txt)
  echo "gpu_wheels.sh: $1 is not in requirements/lock.txt; run ./run lock." >&2
  exit 1
}
WHEELS=()
for name in "${NAMES[@]}"; do WHEELS+=("$(locked_pin "$name")"); done
if [ "${1:-}" = "--print-pins" ]; then printf '%s\n' "${WHEELS[@]}"; exit 0; fi
PLATFORMS=()
for n in 39 35 34 31 28 27 24 17; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" --platform manylinux2014_x86_64 --platform any \
  -d .whl "${WHEELS[@]}"
du -sh .whl
