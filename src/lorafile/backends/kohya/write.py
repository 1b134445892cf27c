"""Recipe -> kohya sd-scripts files: config.toml, dataset.toml, sample_prompts.txt, train.sh.

The recipe given here is already projected (`Kohya.project`): everything in it is expressible.
Every value whose sd-scripts default differs from the recipe's meaning is written explicitly
(learning_rate defaults to 2e-6, mixed_precision to `no`, caption_extension to `.caption`,
network_alpha to 1, sample size to 512, save precision to fp32 ...): see kohya.md §10.
Option names and types: ../shared/reference/kohya_sdxl_train_network_options.json.
"""

from __future__ import annotations

import json

import yaml

from lorafile.backends import shell, tomlio
from lorafile.backends.kohya import training_options
from lorafile.backends.kohya.schema import DATASET_LEVEL
from lorafile.backends.kohya.schema import literal as schema_literal
from lorafile.spec.models import Recipe, Sample

SECTIONS = (
    "model_arguments",
    "additional_network_arguments",
    "optimizer_arguments",
    "dataset_arguments",
    "training_arguments",
    "sample_prompt_arguments",
    "saving_arguments",
    "logging_arguments",
)
# sd-scripts `optimizer_type` names (train_util.get_optimizer; case-insensitive there).
OPTIMIZER_TYPES = {
    "adamw": "AdamW",
    "adamw8bit": "AdamW8bit",
    "adafactor": "Adafactor",
    "prodigy": "Prodigy",
    "lion": "Lion",
    "lion8bit": "Lion8bit",
    "sgd": "SGD",
}
# Adafactor's defaults (relative_step=True) ignore the learning rate; a recipe's lr is meant.
ADAFACTOR_FIXED_LR = {"scale_parameter": False, "relative_step": False, "warmup_init": False}
# Recipe sampler -> `sample_sampler` choice (train_util.get_my_scheduler).
SAMPLERS = {
    "euler_a": "euler_a",
    "euler": "euler",
    "ddim": "ddim",
    "pndm": "pndm",
    "lms": "lms",
    "heun": "heun",
    "dpm_2": "dpm_2",
    "dpm_2_a": "dpm_2_a",
    "dpmpp_2m": "dpmsolver++",
}
SAVE_PRECISION = {"fp32": "float", "fp16": "fp16", "bf16": "bf16"}
# LyCORIS presets (lycoris/kohya.py) for the recipe's target sets.
LYCORIS_PRESETS = {
    ("attention", "ff", "conv"): "full",
    ("attention", "ff"): "attn-mlp",
    ("attention",): "attn-only",
}
NO_CAPTIONS_EXTENSION = ".none"
"""`captions trigger`: a caption extension no file has, so every image gets `class_tokens`."""
META_PREFIX = "lorafile."
SCRIPT = "sdxl_train_network.py"


def num(value: float) -> str:
    """A number as people write it in network_args / prompt lines: `8`, not `8.0`."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def split_passthrough(recipe: Recipe) -> tuple[dict, dict]:
    """kohya pass-through entries: flat `config.toml` args, and `datasets.N.key` entries."""
    flat, nested = {}, {}
    for key, value in recipe.passthrough.get("kohya", {}).items():
        (nested if key.startswith(("datasets.", "regularization.")) else flat)[key] = value
    return flat, nested


def write_files(recipe: Recipe) -> tuple[dict[str, str], set[str]]:
    """All files for one run, by name, and the names to mark executable."""
    flat_pass, nested_pass = split_passthrough(recipe)
    files = {
        "config.toml": tomlio.dumps(config_doc(recipe, flat_pass), header=meta_header(recipe)),
        "dataset.toml": tomlio.dumps(dataset_doc(recipe, nested_pass), header=_dataset_header()),
    }
    if recipe.sample is not None:
        files["sample_prompts.txt"] = sample_prompts(recipe.sample)
    if _distributed(recipe):
        files["accelerate.yaml"] = accelerate_yaml(recipe)
    files["train.sh"] = train_sh(recipe)
    return files, {"train.sh"}


def config_doc(recipe: Recipe, passthrough: dict) -> dict[str, dict]:
    """config.toml for `--config_file`, in the conventional sections (names are cosmetic)."""
    doc = {
        "model_arguments": model_args(recipe),
        "additional_network_arguments": network_args(recipe),
        "optimizer_arguments": optimizer_args(recipe),
        "dataset_arguments": cache_args(recipe),
        "training_arguments": training_args(recipe),
        "sample_prompt_arguments": sample_args(recipe),
        "saving_arguments": saving_args(recipe),
        "logging_arguments": logging_args(recipe),
    }
    doc = {name: {k: v for k, v in table.items() if v is not None} for name, table in doc.items()}
    for key, value in passthrough.items():
        _drop_key(doc, key)
        doc[section_for(key)][key] = value
    return {name: table for name, table in doc.items() if table}


def flat_config(recipe: Recipe) -> dict[str, object]:
    """config.toml as sd-scripts sees it (sections flattened), pass-through applied."""
    flat_pass, _ = split_passthrough(recipe)
    return {k: v for table in config_doc(recipe, flat_pass).values() for k, v in table.items()}


def _drop_key(doc: dict[str, dict], key: str) -> None:
    for table in doc.values():
        table.pop(key, None)


# The conventional section of a pass-through key, by key prefix (sections are cosmetic).
SECTION_PREFIXES = {
    "model_arguments": "pretrained vae v2 v_param fp8 clip_skip no_half tokenizer lowram "
    "highvram disable_mmap",
    "additional_network_arguments": "network unet_lr text_encoder_lr base_weights dim_from "
    "scale_weight loraplus",
    "optimizer_arguments": "optimizer lr_ learning_rate max_grad use_8bit use_lion fused_backward",
    "dataset_arguments": "cache caption shuffle keep_tokens bucket resolution enable_bucket "
    "min_bucket max_bucket color_aug flip random_crop face_crop token_warmup dataset max_data "
    "persistent vae_batch train_data reg_data in_json skip_cache resize_interp alpha_mask "
    "debug_dataset",
    "sample_prompt_arguments": "sample",
    "saving_arguments": "save output metadata training_comment no_metadata huggingface resume "
    "async_upload",
    "logging_arguments": "log wandb console",
}


def section_for(key: str) -> str:
    """The conventional section a pass-through key is written in."""
    for section, starts in SECTION_PREFIXES.items():
        if key.startswith(tuple(starts.split())):
            return section
    return "training_arguments"


def model_args(recipe: Recipe) -> dict:
    base, train = recipe.base, recipe.train
    return {
        "pretrained_model_name_or_path": base.path,
        "vae": base.vae,
        "v_parameterization": True if base.prediction == "v" else None,
        "zero_terminal_snr": True if base.zero_terminal_snr else None,
        "clip_skip": base.clip_skip,
        "fp8_base": True if train.base_precision == "fp8" else None,
    }


def network_args(recipe: Recipe) -> dict:
    adapter, train = recipe.adapter, recipe.train
    lycoris = adapter.algo in ("locon", "loha", "lokr")
    return {
        # networks.lora falls back to dim 4 and alpha 1 when these are missing.
        "network_module": "lycoris.kohya" if lycoris else "networks.lora",
        "network_dim": adapter.rank,
        "network_alpha": float(adapter.effective_alpha),
        "network_dropout": adapter.dropout or None,
        "network_args": adapter_args(recipe) or None,
        "network_train_unet_only": None if adapter.text_encoder else True,
        "unet_lr": train.unet_lr,
        # A list: the option is nargs="*" (only the first value is used for SDXL networks).
        "text_encoder_lr": None if train.text_encoder_lr is None else [train.text_encoder_lr],
    }


def adapter_args(recipe: Recipe) -> list[str]:
    adapter = recipe.adapter
    args: list[str] = []
    if adapter.algo in ("locon", "loha", "lokr"):
        args += [f"algo={adapter.algo}", f"preset={LYCORIS_PRESETS[tuple(adapter.targets)]}"]
    if adapter.factor is not None:
        args.append(f"factor={adapter.factor}")  # LyCORIS LoKr; -1 (automatic) when absent
    if adapter.dora:
        args.append("dora_wd=True")  # LyCORIS DoRA; wd_on_output=True is its default
    if "conv" in adapter.targets:
        # LyCORIS' conv_alpha defaults to network_alpha and lora.py's to 1: always explicit.
        args += [
            f"conv_dim={adapter.effective_conv_rank}",
            f"conv_alpha={num(adapter.effective_conv_alpha)}",
        ]
    return args


def optimizer_args(recipe: Recipe) -> dict:
    train = recipe.train
    opt_args = dict(ADAFACTOR_FIXED_LR) if train.optimizer == "adafactor" else {}
    opt_args.update(train.optimizer_args)
    warmup = train.warmup
    if warmup is None:
        warmup_value: int | float = 0
    elif warmup.unit == "steps":
        warmup_value = int(warmup.value)
    else:
        # A float is a ratio of max_train_steps in sd-scripts (get_scheduler_fix).
        warmup_value = warmup.value / 100
    return {
        "optimizer_type": OPTIMIZER_TYPES[train.optimizer],
        "learning_rate": float(train.lr),
        "optimizer_args": [f"{k}={optimizer_value(v)}" for k, v in opt_args.items()] or None,
        "lr_scheduler": train.scheduler,
        "lr_warmup_steps": warmup_value,
        "lr_scheduler_num_cycles": train.cycles,
        "lr_scheduler_power": None if train.power is None else float(train.power),
        "max_grad_norm": float(train.max_grad_norm),
    }


def optimizer_value(value: object) -> str:
    """`key=value` text that sd-scripts' `ast.literal_eval` turns back into `value`."""
    if isinstance(value, str):
        # Kept verbatim when it already is a Python literal such as a tuple `0.9,0.999`.
        return value if not isinstance(schema_literal(value), str) else repr(value)
    return repr(value)


def cache_args(recipe: Recipe) -> dict:
    cache = recipe.train.cache
    disk = cache.location == "disk"
    return {
        "cache_latents": True if cache.latents else None,
        "cache_latents_to_disk": True if cache.latents and disk else None,
        "cache_text_encoder_outputs": True if cache.text else None,
        "cache_text_encoder_outputs_to_disk": True if cache.text and disk else None,
    }


def training_args(recipe: Recipe) -> dict:
    train = recipe.train
    weights = {r.weight for r in recipe.regularization}
    return {
        "max_train_steps": train.steps,
        "max_train_epochs": train.epochs,
        "train_batch_size": train.batch,
        "gradient_accumulation_steps": train.accumulate,
        "mixed_precision": train.precision,
        "gradient_checkpointing": train.checkpointing,
        # Without sdpa/xformers the U-Net uses plain attention (much more memory).
        "sdpa": True,
        "seed": train.seed,
        "noise_offset": float(train.noise_offset) if train.noise_offset else None,
        "min_snr_gamma": None if train.min_snr_gamma is None else float(train.min_snr_gamma),
        "prior_loss_weight": float(weights.pop()) if weights else None,
        **training_options.write_args(recipe),
    }


def sample_args(recipe: Recipe) -> dict:
    sample = recipe.sample
    if sample is None:
        return {}
    unit = sample.every.unit
    return {
        f"sample_every_n_{unit}": sample.every.every,
        "sample_prompts": "sample_prompts.txt",
        "sample_sampler": SAMPLERS[sample.sampler],
    }


def saving_args(recipe: Recipe) -> dict:
    save = recipe.save
    out = {
        "output_dir": recipe.output.path,
        "output_name": recipe.output_name,
        "save_model_as": "safetensors",
        # None would keep the fp32 parameter dtype: the recipe's precision is always written.
        "save_precision": SAVE_PRECISION[save.precision],
    }
    if save.every is not None:
        unit, every = save.every.unit, save.every.every
        out[f"save_every_n_{unit}"] = every
        if save.keep is not None:
            # save_last_n_steps is a window of steps, save_last_n_epochs a count of files
            # (train_util.get_remove_step_no / get_remove_epoch_no).
            keep = (save.keep - 1) * every if unit == "steps" else save.keep
            out[f"save_last_n_{unit}"] = keep
    return out


def logging_args(recipe: Recipe) -> dict:
    log = recipe.log
    if log.to == "none":
        return {}
    return {"log_with": log.to, "logging_dir": log.path or f"{recipe.output.path}/logs"}


def meta_header(recipe: Recipe) -> list[str]:
    """Comment lines for what only lorafile uses; sd-scripts skips comments."""
    meta: dict[str, object] = {"name": recipe.name}
    for i, dataset in enumerate(recipe.datasets):
        meta[f"datasets.{i}.kind"] = dataset.kind
    hardware = recipe.hardware
    meta["hardware.gpu"] = hardware.gpu
    meta["hardware.vram"] = hardware.vram
    if recipe.train.memory != "manual":
        meta["train.memory"] = recipe.train.memory
    lines = [
        f"Written by lorafile from the recipe {json.dumps(recipe.name)} for kohya sd-scripts {SCRIPT}.",
        "Run ./train.sh. The lines below are read back by `lorafile import kohya`.",
    ]
    lines += [f"{META_PREFIX}{k} = {json.dumps(v)}" for k, v in meta.items() if v is not None]
    return lines


def _dataset_header() -> list[str]:
    return [
        "Written by lorafile for sd-scripts --dataset_config (library/config_util.py schema).",
        "image_dir holds the images directly; folder names do not set repeats here.",
    ]


def dataset_doc(recipe: Recipe, passthrough: dict) -> dict:
    """dataset.toml: `[[datasets]]` blocks of consecutive datasets with equal block settings."""
    blocks: list[dict] = []
    for i, _dataset in enumerate(recipe.datasets):
        block, subset = _split(dataset_entry(recipe, i), _extras(passthrough, f"datasets.{i}."))
        _place(blocks, block, subset, max(len(blocks) - 1, 0))
    first = dict(blocks[0]) if blocks else {}
    first.pop("subsets", None)
    start = 0  # regularization subsets keep their order: never placed before the previous one
    for j in range(len(recipe.regularization)):
        entry = {**first, **regularization_entry(recipe, j)}
        block, subset = _split(entry, _extras(passthrough, f"regularization.{j}."))
        start = _place(blocks, block, subset, start)
    return {"datasets": blocks}


def regularization_entry(recipe: Recipe, index: int) -> dict:
    """A regularization subset: `is_reg`, the class prompt as `class_tokens`, repeats 1.

    sd-scripts re-uses regularization images so an epoch sees as many of them as training
    images (1:1); a caption file beside a regularization image wins over `class_tokens`.
    """
    reg = recipe.regularization[index]
    return {
        "image_dir": reg.path,
        "class_tokens": reg.class_prompt,
        "is_reg": True,
        "num_repeats": 1,
        "caption_extension": ".txt",
    }


def dataset_entry(recipe: Recipe, index: int) -> dict:
    """The dataset-config keys of recipe dataset `index`, block and subset keys together."""
    dataset = recipe.datasets[index]
    buckets = dataset.buckets
    trigger_only = dataset.captions == "trigger"
    return {
        "resolution": [dataset.resolution.width, dataset.resolution.height],
        "batch_size": recipe.train.batch,
        "enable_bucket": buckets.enabled,
        "min_bucket_reso": buckets.min,
        "max_bucket_reso": buckets.max,
        "bucket_reso_steps": buckets.step,
        "bucket_no_upscale": not buckets.upscale,
        "image_dir": dataset.path,
        "num_repeats": dataset.repeats,
        "caption_extension": NO_CAPTIONS_EXTENSION if trigger_only else f".{dataset.captions}",
        "class_tokens": (recipe.trigger or "") if trigger_only else None,
        "caption_prefix": None if trigger_only else recipe.trigger,
        "shuffle_caption": dataset.shuffle_captions,
        "keep_tokens": dataset.keep_tokens,
        "flip_aug": dataset.flip,
        "color_aug": dataset.color_aug,
        "caption_dropout_rate": float(dataset.caption_dropout),
    }


def _extras(passthrough: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in passthrough.items() if k.startswith(prefix)}


def _split(entry: dict, extras: dict) -> tuple[dict, dict]:
    merged = {**entry, **extras}
    block = {k: v for k, v in merged.items() if k in DATASET_LEVEL and v is not None}
    subset = {k: v for k, v in merged.items() if k not in DATASET_LEVEL and v is not None}
    return block, subset


def _place(blocks: list[dict], block: dict, subset: dict, start: int) -> int:
    """Append `subset` to the first block from `start` with equal settings; return its index."""
    for index in range(start, len(blocks)):
        existing = blocks[index]
        # sd-scripts ignores a second subset with the same image_dir in one dataset.
        if subset.get("image_dir") in {s.get("image_dir") for s in existing["subsets"]}:
            continue
        if {k: v for k, v in existing.items() if k != "subsets"} == block:
            existing["subsets"].append(subset)
            return index
    blocks.append({**block, "subsets": [subset]})
    return len(blocks) - 1


def sample_prompts(sample: Sample) -> str:
    """sample_prompts.txt: one prompt per line with ` --` options (train_util.line_to_prompt_dict)."""
    options = [f"--w {sample.size.width}", f"--h {sample.size.height}"]
    if sample.seed is not None:
        options.append(f"--d {sample.seed}")
    options += [f"--l {num(sample.cfg)}", f"--s {sample.steps}", f"--ss {SAMPLERS[sample.sampler]}"]
    if sample.negative:
        options.insert(0, f"--n {sample.negative}")
    lines = ["# Written by lorafile: one prompt per line, options after ` --` (kohya format)."]
    lines += [f"{prompt} {' '.join(options)}" for prompt in sample.prompts]
    return "\n".join(lines) + "\n"


def _distributed(recipe: Recipe) -> bool:
    hw = recipe.hardware
    return hw.gpus * hw.machines > 1 or hw.main_address is not None or hw.main_port is not None


def accelerate_yaml(recipe: Recipe) -> str:
    """accelerate config for several GPUs or machines (`accelerate launch --config_file`)."""
    hw = recipe.hardware
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if hw.gpus * hw.machines > 1 else "NO",
        "num_machines": hw.machines,
        "num_processes": hw.gpus * hw.machines,
        "machine_rank": 0,
        "main_process_ip": hw.main_address,
        "main_process_port": hw.main_port,
        "mixed_precision": recipe.train.precision,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    config = {k: v for k, v in config.items() if v is not None}
    head = "# Written by lorafile. On machine K of several, run train.sh with MACHINE_RANK=K.\n"
    return head + yaml.safe_dump(config, sort_keys=False)


def train_sh(recipe: Recipe) -> str:
    """The launch command: accelerate, then sd-scripts with both config files.

    Every word goes through shell.quote; the recipe name is only in a comment, as a JSON string
    (one line whatever it holds): the name may come from someone else's config (issue 12).
    """
    hw = recipe.hardware
    launch: list[object] = ["accelerate", "launch", "--num_cpu_threads_per_process", 1]
    if _distributed(recipe):
        rank = shell.Expansion('"${MACHINE_RANK:-0}"')
        launch += ["--config_file", "accelerate.yaml", "--machine_rank", rank]
    launch += ["--num_processes", hw.gpus * hw.machines, "--num_machines", hw.machines]
    launch += ["--mixed_precision", recipe.train.precision]
    script = [shell.Expansion(f'"$SD_SCRIPTS/{SCRIPT}"'), "--config_file", "config.toml"]
    script += ["--dataset_config", "dataset.toml"]
    return "\n".join(
        [
            "#!/usr/bin/env bash",
            f"# Written by lorafile from the recipe {json.dumps(recipe.name)}.",
            "# SD_SCRIPTS: your kohya-ss/sd-scripts checkout (pip install lycoris-lora for LyCORIS).",
            "set -euo pipefail",
            'cd "$(dirname "$0")"',
            'SD_SCRIPTS="${SD_SCRIPTS:-sd-scripts}"',
            shell.command(launch, script),
            "",
        ]
    )
