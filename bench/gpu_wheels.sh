#!/usr/bin/env bash
# Download, here, the wheels bench/gpu.sh needs on the H200 device machine, into .whl/.
# That machine has torch, transformers, peft, accelerate and safetensors (Python 3.12) but no
# network and no diffusers, bitsandbytes, pydantic or lark. Then carry them (device tool):
#   bash bench/gpu_wheels.sh      # once, here (about 52 MB: bitsandbytes is 43)
#   run(command="bash bench/gpu.sh --budget-s 420", carry=[".whl"], timeout_s=540)
# gpu.sh installs whatever lies in .whl/ into /tmp/site before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
# Pinned to the versions the project's .venv runs (pip list), so the GPU runs the tested code.
WHEELS=(
  bitsandbytes==0.50.2 diffusers==0.42.1 importlib_metadata==10.2.0
  lark==1.3.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 tomli_w==1.2.0 tomlkit==0.15.2 toml==0.10.2
)
PLATFORMS=()
for n in 39 35 34 31 28 27 24 17; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" --platform manylinux2014_x86_64 --platform any \
  -d .whl "${WHEELS[@]}"
du -sh .whl
