#!/usr/bin/env bash
# Train `comic_ink_locon` with SimpleTuner (pip install 'simpletuner[cuda]').
# The config folder is this script's folder: config.json, multidatabackend.json, lycoris_config.json.
set -euo pipefail
cd "$(dirname "$0")"
export TRAINING_NUM_PROCESSES=1
export TRAINING_NUM_MACHINES=1
export MIXED_PRECISION=bf16
exec simpletuner train "$@"
