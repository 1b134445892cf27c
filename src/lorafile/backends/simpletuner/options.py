"""SimpleTuner's argument table: names, types, defaults and choices, plus the legacy spellings.

The table (`lorafile/data/simpletuner_options.json`) is SimpleTuner's own argparse parser dumped at
commit bc8e6ab7 (v4.8.0); argparse is built from the WebUI field registry
(`simpletuner/helpers/configuration/cmd_args.py`). The writer checks every key it emits against it
and the reader uses it to coerce string values (config.env, TRAINER_EXTRA_ARGS) and to name
unknown keys, which SimpleTuner's `parse_args` would reject.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

# config.env variables SimpleTuner maps to arguments (`simpletuner/helpers/configuration/
# env_file.py::env_to_args_map`); everything else must go through TRAINER_EXTRA_ARGS.
ENV_TO_ARG = {
    "RESUME_CHECKPOINT": "resume_from_checkpoint",
    "DATALOADER_CONFIG": "data_backend_config",
    "ASPECT_BUCKET_ROUNDING": "aspect_bucket_rounding",
    "TRAINING_SEED": "seed",
    "USE_EMA": "use_ema",
    "USE_XFORMERS": "enable_xformers_memory_efficient_attention",
    "MINIMUM_RESOLUTION": "minimum_image_size",
    "OUTPUT_DIR": "output_dir",
    "USE_DORA": "use_dora",
    "LORA_TYPE": "lora_type",
    "LYCORIS_CONFIG": "lycoris_config",
    "MAX_NUM_STEPS": "max_train_steps",
    "NUM_EPOCHS": "num_train_epochs",
    "CHECKPOINTING_STEPS": "checkpoint_step_interval",
    "CHECKPOINT_STEP_INTERVAL": "checkpoint_step_interval",
    "CHECKPOINT_EPOCH_INTERVAL": "checkpoint_epoch_interval",
    "CHECKPOINTING_LIMIT": "checkpoints_total_limit",
    "TRACKER_PROJECT_NAME": "tracker_project_name",
    "TRACKER_RUN_NAME": "tracker_run_name",
    "MODEL_TYPE": "model_type",
    "MODEL_NAME": "pretrained_model_name_or_path",
    "MODEL_FAMILY": "model_family",
    "TRAIN_BATCH_SIZE": "train_batch_size",
    "USE_GRADIENT_CHECKPOINTING": "gradient_checkpointing",
    "CAPTION_DROPOUT_PROBABILITY": "caption_dropout_probability",
    "RESOLUTION_TYPE": "resolution_type",
    "RESOLUTION": "resolution",
    "VALIDATION_SEED": "validation_seed",
    "VALIDATION_STEPS": "validation_step_interval",
    "VALIDATION_STEP_INTERVAL": "validation_step_interval",
    "VALIDATION_EPOCH_INTERVAL": "validation_epoch_interval",
    "VALIDATION_RESOLUTION": "validation_resolution",
    "VALIDATION_GUIDANCE": "validation_guidance",
    "VALIDATION_GUIDANCE_RESCALE": "validation_guidance_rescale",
    "VALIDATION_NUM_INFERENCE_STEPS": "validation_num_inference_steps",
    "VALIDATION_PROMPT": "validation_prompt",
    "VALIDATION_NEGATIVE_PROMPT": "validation_negative_prompt",
    "MIXED_PRECISION": "mixed_precision",
    "OPTIMIZER": "optimizer",
    "LEARNING_RATE": "learning_rate",
    "LR_SCHEDULE": "lr_scheduler",
    "LR_WARMUP_STEPS": "lr_warmup_steps",
    "LR_END": "lr_end",
    "BASE_MODEL_PRECISION": "base_model_precision",
    "TRAINING_NUM_PROCESSES": "num_processes",
    "TRAINING_NUM_MACHINES": "num_machines",
    "GRADIENT_ACCUMULATION_STEPS": "gradient_accumulation_steps",
}

# Launcher-only variables config.env may hold (`simpletuner/train.sh`, `cli/train.py`).
ENV_LAUNCHER = {
    "TRAINING_DYNAMO_BACKEND",
    "TRAINER_DYNAMO_BACKEND",
    "ACCELERATE_EXTRA_ARGS",
    "ACCELERATE_CONFIG_PATH",
    "SIMPLETUNER_LOG_LEVEL",
    "VENV_PATH",
    "CONFIG_BACKEND",
    "ENV",
    "DISABLE_UPDATES",
}

# Keys `cli_utils.mapping_to_cli_args` renames (PR #1706, 2025-10-21) or drops.
LEGACY_RENAMES = {
    "checkpointing_steps": "checkpoint_step_interval",
    "validation_steps": "validation_step_interval",
    "save_total_limit": "checkpoints_total_limit",
}
DATASET_ONLY_KEYS = (
    "repeats",
    "aspect_ratio_bucketing",
    "aspect_ratio_bucket_min",
    "aspect_ratio_bucket_max",
)

# Values SimpleTuner JSON-serialises before argparse sees them (cli_utils).
JSON_VALUED = {
    "webhook_config",
    "deepspeed_config",
    "distillation_config",
    "publishing_config",
    "peft_lora_target_modules",
}


@cache
def table() -> dict[str, dict]:
    """dest -> {type, default, choices?, aliases?, required?} for every SimpleTuner argument."""
    text = resources.files("lorafile").joinpath("data/simpletuner_options.json").read_text()
    return json.loads(text)["options"]


def known(key: str) -> bool:
    return key in table()


def default(key: str) -> object:
    """The argparse default as a Python value (None when the table says None)."""
    raw = table()[key]["default"]
    if raw == "None":
        return None
    if raw in ("True", "False"):
        return raw == "True"
    try:
        return json.loads(raw.replace("'", '"'))
    except ValueError:
        return raw.strip("'")


def check(key: str, value: object) -> str | None:
    """Why SimpleTuner would reject `key=value`, or None when it accepts it."""
    spec = table().get(key)
    if spec is None:
        return f"`{key}` is not a SimpleTuner argument"
    kind = spec["type"]
    if key in JSON_VALUED:
        return None
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
    if not ok:
        return f"`{key}` takes a {kind}, not {value!r}"
    choices = spec.get("choices")
    if choices and str(value) not in choices:
        return f"`{key}` is {value!r}; SimpleTuner accepts one of {', '.join(choices)}"
    return None


def coerce(key: str, text: str) -> object:
    """A command-line string (config.env, TRAINER_EXTRA_ARGS) as the value argparse would make."""
    kind = table().get(key, {}).get("type", "str")
    try:
        if kind == "bool":
            return text.strip().lower() not in ("false", "0", "no", "off")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        return text
    return text
