#!/usr/bin/env bash
# Train `my_style_v1` with SimpleTuner (pip install 'simpletuner[cuda]').
# The config folder is this script's folder: config.json, multidatabackend.json.
set -euo pipefail
cd "$(dirname "$0")"
export TRAINING_NUM_PROCESSES=1
export TRAINING_NUM_MACHINES=1
export MIXED_PRECISION=bf16
exec simpletuner train "$@"
