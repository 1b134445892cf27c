#!/usr/bin/env bash
# Written by lorafile from the recipe "comic_ink_locon".
# SD_SCRIPTS: your kohya-ss/sd-scripts checkout (pip install lycoris-lora for LyCORIS).
set -euo pipefail
cd "$(dirname "$0")"
SD_SCRIPTS="${SD_SCRIPTS:-sd-scripts}"
accelerate launch --num_cpu_threads_per_process 1 --num_processes 1 --num_machines 1 --mixed_precision bf16 \
  "$SD_SCRIPTS/sdxl_train_network.py" --config_file config.toml --dataset_config dataset.toml
