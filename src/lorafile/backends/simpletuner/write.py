"""Serialise a normalized recipe into SimpleTuner's files.

`generate(recipe)` builds plain dicts (config, data backends, LyCORIS config, prompt library)
from a recipe that `mapping.normalize` already reduced to what SimpleTuner expresses;
`render(...)` turns them into file text. Every config key is a registry argument name without
dashes (documentation/OPTIONS.md; checked against data/simpletuner_options.json), and every
value whose SimpleTuner default differs from the recipe's meaning is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import tomli_w

from lorafile.backends import shell, tomlio
from lorafile.backends.simpletuner import mapping as m
from lorafile.backends.simpletuner import options as opts
from lorafile.backends.simpletuner import training_options
from lorafile.compiler.hub import parse_hub_ref
from lorafile.spec import Recipe

DATA_BACKEND_FILE = "multidatabackend.json"
LYCORIS_FILE = "lycoris_config.json"
PROMPT_LIBRARY_FILE = "user_prompt_library.json"
TEXT_EMBEDS_ID = "text-embeds"


@dataclass
class Generated:
    """SimpleTuner's files as data, before any passthrough is applied."""

    config: dict = field(default_factory=dict)
    datasets: list[dict] = field(default_factory=list)
    lycoris: dict | None = None
    prompts: dict | None = None


def generate(recipe: Recipe) -> Generated:
    """The files for a normalized recipe (see mapping.normalize)."""
    out = Generated()
    out.config = {
        **_model(recipe),
        **_adapter(recipe, out),
        **_schedule(recipe),
        **_optimizer(recipe),
        **_loss(recipe),
        **_ema(recipe),
        **_saving(recipe),
        **_validation(recipe, out),
        **_logging(recipe),
    }
    out.datasets = _data_backends(recipe)
    return out


def _model_source(path: str, variant: str | None) -> dict:
    """`org/name@rev` is SimpleTuner's model id plus `revision`; `variant` as it is."""
    ref = parse_hub_ref(path)
    out: dict = {"pretrained_model_name_or_path": path}
    if ref is not None and ref.revision and ref.filename is None:
        out = {"pretrained_model_name_or_path": ref.repo_id, "revision": ref.revision}
    if variant is not None:
        out["variant"] = variant
    return out


def _model(recipe: Recipe) -> dict:
    base = recipe.base
    config = {
        "model_family": "sdxl",
        "model_type": "lora",  # the registry default is `full`
        **_model_source(base.path, base.variant),
        "pretrained_vae_model_name_or_path": base.vae,
        "output_dir": recipe.output.path,
        "data_backend_config": DATA_BACKEND_FILE,
        "resolution": m.square_side(recipe.datasets[0].resolution),
        "resolution_type": "pixel_area",
        "mixed_precision": recipe.train.precision,
        "gradient_checkpointing": recipe.train.checkpointing,
        # `caption_dropout_probability` defaults to 0.1 in SimpleTuner, 0 in a recipe.
        "caption_dropout_probability": recipe.datasets[0].caption_dropout,
    }
    if base.prediction == "v":
        config["prediction_type"] = "v_prediction"
    if base.zero_terminal_snr:
        # Zero-terminal-SNR needs trailing timesteps (Lin et al. 2024, section 3.3).
        config["rescale_betas_zero_snr"] = True
        config["training_scheduler_timestep_spacing"] = "trailing"
    if recipe.train.base_precision == "fp32":
        config["base_model_default_dtype"] = "fp32"
    if recipe.hardware.gpus > 1:
        config["num_processes"] = recipe.hardware.gpus
    return config


def _adapter(recipe: Recipe, out: Generated) -> dict:
    adapter = recipe.adapter
    if adapter.algo == "lora":
        config = {
            "lora_type": "standard",
            "lora_rank": adapter.rank,
            "lora_alpha": adapter.alpha,
            "lora_dropout": adapter.dropout,  # SimpleTuner default 0.1
            "peft_lora_target_modules": [
                name for t in adapter.targets for name in m.PEFT_TARGETS[t]
            ],
        }
        if adapter.text_encoder:
            config["train_text_encoder"] = True
        if adapter.dora:
            config["use_dora"] = True  # PEFT DoRA (documentation/OPTIONS.md `--use_dora`)
    else:
        # SimpleTuner rejects a LyCORIS config outside its config folder (cmd_args.py ~L1130).
        config = {"lora_type": "lycoris", "lycoris_config": LYCORIS_FILE}
        out.lycoris = _lycoris(recipe)
    # lora_format=comfyui writes kohya-style keys that ComfyUI and A1111 load (v4.3.0).
    config["lora_format"] = "comfyui" if recipe.save.layout == "kohya" else "diffusers"
    return config


def _lycoris(recipe: Recipe) -> dict:
    """lycoris_config.json (documentation/LYCORIS.md; alphas already whole numbers)."""
    adapter = recipe.adapter
    config: dict = {
        "algo": adapter.algo,
        "multiplier": 1.0,
        "linear_dim": adapter.rank,
        "linear_alpha": int(adapter.effective_alpha),
    }
    if "conv" in adapter.targets:
        config["conv_dim"] = adapter.effective_conv_rank
        config["conv_alpha"] = int(adapter.effective_conv_alpha)
    if adapter.dropout:
        config["dropout"] = adapter.dropout
    if adapter.factor is not None:
        config["factor"] = adapter.factor  # LoKr; LyCORIS' default -1 is automatic
    if adapter.dora:
        config["dora_wd"] = True  # forwarded to lycoris.create_lycoris (LyCORIS DoRA)
    config["apply_preset"] = {
        "target_module": [cls for t in adapter.targets for cls in m.LYCORIS_TARGETS[t]]
    }
    return config


def _schedule(recipe: Recipe) -> dict:
    train = recipe.train
    config = {
        "max_train_steps": train.steps or 0,  # 0 = use epochs, and the other way round
        "num_train_epochs": train.epochs or 0,
        "train_batch_size": train.batch,  # SimpleTuner default 4
        "gradient_accumulation_steps": train.accumulate,
        "learning_rate": train.lr,  # SimpleTuner default 4e-7 (a full-finetune value)
        "lr_scheduler": train.scheduler,  # SimpleTuner default constant_with_warmup
        "lr_warmup_steps": int(train.warmup.value) if train.warmup else 0,
    }
    if train.cycles is not None:
        config["lr_num_cycles"] = train.cycles
    if train.scheduler == "polynomial":
        config["lr_power"] = train.power if train.power is not None else 1.0  # default 0.8
    if train.seed is not None:
        config["seed"] = train.seed
    return config


def _optimizer(recipe: Recipe) -> dict:
    train = recipe.train
    config: dict = {"optimizer": m.OPTIMIZER_TO_ST[train.optimizer]}
    if train.optimizer_args:
        config["optimizer_config"] = ",".join(
            f"{k}={_arg_text(v)}" for k, v in train.optimizer_args.items()
        )
    # kohya and the recipe clip by global norm; SimpleTuner defaults to value clipping at 2.0.
    config["max_grad_norm"] = train.max_grad_norm
    config["grad_clip_method"] = "norm"
    return config


def _arg_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _loss(recipe: Recipe) -> dict:
    train = recipe.train
    config: dict = {}
    if train.noise_offset:
        # noise_offset only acts with offset_noise, and only on 25% of steps by default.
        config.update(
            offset_noise=True,
            noise_offset=train.noise_offset,
            noise_offset_probability=train.noise_offset_probability,
        )
    if train.min_snr_gamma is not None:
        config["snr_gamma"] = int(train.min_snr_gamma)  # an int argument in SimpleTuner
    config.update(training_options.write_args(recipe))
    return config


def _ema(recipe: Recipe) -> dict:
    """`use_ema` averages the trained (LoRA/LyCORIS) weights after every step
    (`ema_update_interval` 1, no `ema_warmup_steps`: the recipe's rule)."""
    if recipe.ema is None:
        return {}
    return {"use_ema": True, "ema_decay": recipe.ema.decay}


def _saving(recipe: Recipe) -> dict:
    every = recipe.save.every
    config: dict = {"checkpoint_step_interval": 0}  # default 500; 0 = no step checkpoints
    if every is not None and every.unit == "steps":
        config["checkpoint_step_interval"] = every.every
    elif every is not None:
        config["checkpoint_epoch_interval"] = every.every
    count = m.checkpoint_count(recipe)
    keep = recipe.save.keep
    if keep is not None or count is not None:
        # SimpleTuner keeps 5 by default; "keep all" is every checkpoint this run makes.
        config["checkpoints_total_limit"] = keep if keep is not None else max(count, 1)
    return config


def _validation(recipe: Recipe, out: Generated) -> dict:
    sample = recipe.sample
    if sample is None:
        return {"validation_disable": True}
    config: dict = {"validation_prompt": sample.prompts[0]}
    if len(sample.prompts) > 1:
        out.prompts = {f"prompt_{i}": p for i, p in enumerate(sample.prompts[1:], start=1)}
        config["user_prompt_library"] = PROMPT_LIBRARY_FILE
    if sample.every.unit == "steps":
        config["validation_step_interval"] = sample.every.every
    else:
        config.update(validation_step_interval=0, validation_epoch_interval=sample.every.every)
    config.update(
        validation_resolution=f"{sample.size.width}x{sample.size.height}",  # default "256"
        validation_noise_scheduler=m.SAMPLER_TO_ST[sample.sampler],
        validation_num_inference_steps=sample.steps,
        validation_guidance=sample.cfg,
        validation_negative_prompt=sample.negative,
    )
    if sample.seed is not None:
        config["validation_seed"] = sample.seed
    if recipe.base.zero_terminal_snr:
        # As the native sampler: CFG rescale 0.7 (Lin et al. 2024, section 3.4).
        config["validation_guidance_rescale"] = 0.7
    return config


def _logging(recipe: Recipe) -> dict:
    config: dict = {"report_to": recipe.log.to, "tracker_run_name": recipe.name}
    if recipe.log.path is not None:
        config["logging_dir"] = recipe.log.path
    return config


def dataset_id(path: str, taken: set[str]) -> str:
    """A stable dataset id from the folder name (caches are keyed on it)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", path.rstrip("/").rsplit("/", 1)[-1]).strip("-").lower()
    stem = stem or "dataset"
    name, n = stem, 2
    while name in taken or name == TEXT_EMBEDS_ID:
        name, n = f"{stem}-{n}", n + 1
    taken.add(name)
    return name


def _data_backends(recipe: Recipe) -> list[dict]:
    """multidatabackend.json entries (documentation/DATALOADER.md)."""
    taken: set[str] = set()
    entries = [_image_entry(recipe, ds, dataset_id(ds.path, taken)) for ds in recipe.datasets]
    for reg in recipe.regularization:
        entries.append(_reg_entry(recipe, reg, dataset_id(reg.path, taken)))
    entries.append(
        {
            "id": TEXT_EMBEDS_ID,
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,  # exactly one default text_embeds entry holds the prompt cache
            "cache_dir": "cache/text",
        }
    )
    return entries


def _image_entry(recipe: Recipe, ds, ident: str) -> dict:
    side = m.square_side(ds.resolution)
    entry: dict = {
        "id": ident,
        "type": "local",
        "dataset_type": "image",
        "instance_data_dir": ds.path,
    }
    # Dataset-level strategies are spelled as helpers/prompts.py checks them (`instanceprompt`).
    if ds.captions == "trigger":
        entry.update(caption_strategy="instanceprompt", instance_prompt=recipe.trigger)
    else:
        entry["caption_strategy"] = "textfile" if ds.captions == "txt" else "filename"
        if recipe.trigger:
            entry.update(instance_prompt=recipe.trigger, prepend_instance_prompt=True)
    entry.update(
        repeats=ds.repeats - 1,  # SimpleTuner counts extra passes: 0 = each image once
        resolution=side,
        resolution_type="pixel_area",
    )
    entry.update(_crop(ds.buckets, side))
    if ds.shuffle_captions:
        entry["caption_shuffle"] = {
            "enable": True,
            "split_on": "comma",
            "position_start": ds.keep_tokens,
        }
    entry["cache_dir_vae"] = f"cache/vae/{ident}"
    return entry


def _crop(buckets, side: int) -> dict:
    if not buckets.enabled:
        # No bucketing: every image is cropped to the square training resolution, as kohya does.
        return {"crop": True, "crop_aspect": "square", "crop_style": "center"}
    low, high = m.aspect_limits(buckets, side)
    return {"crop": False, "minimum_aspect_ratio": low, "maximum_aspect_ratio": high}


def _reg_entry(recipe: Recipe, reg, ident: str) -> dict:
    side = m.square_side(recipe.datasets[0].resolution)
    return {
        "id": ident,
        "type": "local",
        "dataset_type": "image",
        "instance_data_dir": reg.path,
        "is_regularisation_data": True,
        "caption_strategy": "instanceprompt",
        "instance_prompt": reg.class_prompt,
        "repeats": 0,
        "probability": reg.ratio,
        "resolution": side,
        "resolution_type": "pixel_area",
        "crop": False,
        "cache_dir_vae": f"cache/vae/{ident}",
    }


def render_config(config: dict, fmt: str) -> tuple[str, str]:
    """(file name, text) of the main config in `json` or `toml`."""
    if fmt == "toml":
        safe = _toml_safe(config)
        tomlio.check_ints(safe)  # IntOutOfRange: the caller reports it
        return "config.toml", tomli_w.dumps(safe)
    return "config.json", json.dumps(config, indent=2) + "\n"


def _toml_safe(config: dict) -> dict:
    # TOML has no null; JSON-valued options are given as their JSON text.
    out = {}
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, dict | list) and key in opts.JSON_VALUED:
            value = json.dumps(value)
        out[key] = value
    return out


def render_train_sh(recipe: Recipe, config_name: str) -> str:
    """A launcher: `simpletuner train` finds config.json/.toml in the current folder."""
    processes = recipe.hardware.gpus * recipe.hardware.machines
    lines = [
        "#!/usr/bin/env bash",
        # The name is free text from the recipe or a foreign config: one inert comment line.
        f"# Train `{shell.inline(recipe.name)}` with SimpleTuner (pip install 'simpletuner[cuda]').",
        f"# The config folder is this script's folder: {config_name}, {DATA_BACKEND_FILE}"
        + (f", {LYCORIS_FILE}" if recipe.adapter.algo != "lora" else "")
        + ".",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"export TRAINING_NUM_PROCESSES={shell.quote(processes)}",
        "export TRAINING_NUM_MACHINES=1",
        f"export MIXED_PRECISION={shell.quote(recipe.train.precision)}",
        'exec simpletuner train "$@"',
    ]
    return "\n".join(lines) + "\n"
