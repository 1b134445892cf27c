"""SimpleTuner settings without a recipe equivalent: kept in `recipe.passthrough["simpletuner"]`.

Keys are argument names (`lr_end`, `grad_clip_method`) or dotted paths into the other files:
`datasets.<i>.<key>` and `regularization.<i>.<key>` (entries of multidatabackend.json, in recipe
order), `text_embeds.<key>`, `lycoris.<key>` and `lycoris.apply_preset.<key>`. Values a recipe's
passthrough cannot hold directly (objects, lists of objects) are stored as `json:<text>`.

The reader keeps exactly the values that differ from what the writer would produce for the recipe
it read; the writer applies them last. Keys the recipe itself expresses (`learning_rate`) are
never passthrough: the recipe field wins and the writer reports the stray key.
"""

from __future__ import annotations

import json

from lorafile.backends.simpletuner import mapping as m
from lorafile.backends.simpletuner import options as opts
from lorafile.backends.simpletuner import training_options
from lorafile.backends.simpletuner.load import image_entries, is_regularisation
from lorafile.backends.simpletuner.write import Generated, generate
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.spec import Recipe

# Arguments the reader turns into recipe fields (or that the writer fixes): not passthrough.
CONSUMED = frozenset(
    {
        "model_family",
        "model_type",
        "pretrained_model_name_or_path",
        "pretrained_vae_model_name_or_path",
        "output_dir",
        "data_backend_config",
        "resolution",
        "resolution_type",
        "mixed_precision",
        "gradient_checkpointing",
        "caption_dropout_probability",
        "prediction_type",
        "rescale_betas_zero_snr",
        "base_model_default_dtype",
        "num_processes",
        "lora_type",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "peft_lora_target_modules",
        "train_text_encoder",
        "text_encoder_lr",
        "lycoris_config",
        "lora_format",
        "use_dora",
        "use_ema",
        "ema_decay",
        "max_train_steps",
        "num_train_epochs",
        "train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler",
        "lr_warmup_steps",
        "lr_num_cycles",
        "lr_power",
        "seed",
        "optimizer",
        "optimizer_config",
        "max_grad_norm",
        "offset_noise",
        "noise_offset",
        "snr_gamma",
        "checkpoint_step_interval",
        "checkpoint_epoch_interval",
        "checkpoints_total_limit",
        "validation_disable",
        "validation_prompt",
        "user_prompt_library",
        "validation_step_interval",
        "validation_epoch_interval",
        "validation_resolution",
        "validation_noise_scheduler",
        "validation_num_inference_steps",
        "validation_guidance",
        "validation_negative_prompt",
        "validation_seed",
        "report_to",
        "tracker_run_name",
        "logging_dir",
        "caption_strategy",
        "instance_prompt",
        "prepend_instance_prompt",
        *training_options.CONSUMED,
    }
)
# Absent from a config, these still mean SimpleTuner's default, which differs from the value
# the writer emits for a recipe: keep the default so a re-export behaves like the original.
DEFAULT_SENSITIVE = ("grad_clip_method",)
CONSUMED_DATASET = frozenset(
    {
        "instance_data_dir",
        "caption_strategy",
        "instance_prompt",
        "prepend_instance_prompt",
        "repeats",
        "resolution",
        "resolution_type",
        "crop",
        "is_regularisation_data",
        "is_regularization_data",
        "probability",
        "dataset_type",
        "disabled",
        "disable",
        "default",
    }
)
CONSUMED_LYCORIS = frozenset(
    {
        "linear_dim",
        "linear_alpha",
        "conv_dim",
        "conv_alpha",
        "dropout",
        "apply_preset",
        "factor",
        "dora_wd",
    }
)
JSON_PREFIX = "json:"


def encode(value: object) -> object:
    """A value as a recipe passthrough value (scalars and flat lists as they are)."""
    scalar = (str, int, float, bool)
    if isinstance(value, scalar) or (
        isinstance(value, list) and all(isinstance(v, scalar) for v in value)
    ):
        return value
    return JSON_PREFIX + json.dumps(value)


def decode(value: object) -> object:
    if isinstance(value, str) and value.startswith(JSON_PREFIX):
        try:
            return json.loads(value[len(JSON_PREFIX) :])
        except ValueError:
            return value
    return value


def lycoris_algo(algo: object) -> str:
    return algo if algo in ("loha", "lokr") else "locon"


def collect(recipe: Recipe, config: dict, entries: list[dict], lycoris: dict | None) -> dict:
    """The passthrough for a recipe just read from `config` (see module doc)."""
    gen = generate(m.normalize(recipe, lambda *a: None))
    out: dict = {}
    for key, value in config.items():
        if key not in CONSUMED and gen.config.get(key) != value:
            out[key] = encode(value)
    wanted = config.get("optimizer")
    if wanted not in (None, gen.config["optimizer"]) and (
        m.OPTIMIZER_FROM_ST.get(wanted) == recipe.train.optimizer
    ):
        out["optimizer"] = wanted
    for key in DEFAULT_SENSITIVE:
        if key not in config and key in gen.config and opts.default(key) != gen.config[key]:
            out[key] = opts.default(key)
    out.update(_collect_entries(recipe, entries, gen))
    if lycoris:
        out.update(_collect_lycoris(recipe, lycoris, gen.lycoris or {}))
    return out


def _collect_entries(recipe: Recipe, entries: list[dict], gen: Generated) -> dict:
    images = image_entries(entries)
    if not images or not any(not is_regularisation(e) for e in images):
        return {}
    pairs = [("datasets", e) for e in images if not is_regularisation(e)]
    pairs += [("regularization", e) for e in images if is_regularisation(e)]
    counters = {"datasets": 0, "regularization": 0}
    out: dict = {}
    for role, entry in pairs:
        index = counters[role]
        counters[role] += 1
        position = index if role == "datasets" else len(recipe.datasets) + index
        out.update(_diff(f"{role}.{index}.", entry, gen.datasets[position], CONSUMED_DATASET))
    embeds = [e for e in entries if e.get("dataset_type") == "text_embeds" and e.get("default")]
    if embeds:
        out.update(_diff("text_embeds.", embeds[0], gen.datasets[-1], CONSUMED_DATASET))
    return out


def _diff(prefix: str, source: dict, generated: dict, consumed: frozenset) -> dict:
    return {
        prefix + key: encode(value)
        for key, value in source.items()
        if key not in consumed and value is not None and generated.get(key) != value
    }


def _collect_lycoris(recipe: Recipe, lycoris: dict, generated: dict) -> dict:
    out = _diff("lycoris.", lycoris, generated, CONSUMED_LYCORIS | {"algo"})
    if lycoris.get("algo") != generated.get("algo") and (
        lycoris_algo(lycoris.get("algo")) == recipe.adapter.algo
    ):
        out["lycoris.algo"] = encode(lycoris.get("algo"))
    preset = lycoris.get("apply_preset")
    if isinstance(preset, dict):
        out.update(
            _diff(
                "lycoris.apply_preset.",
                preset,
                generated.get("apply_preset", {}),
                frozenset({"target_module"}),
            )
        )
    return out


def apply(gen: Generated, recipe: Recipe, report) -> None:
    """Apply `passthrough["simpletuner"]` to the generated files, reporting what cannot be."""
    for key, raw in recipe.passthrough.get("simpletuner", {}).items():
        problem = _place(gen, recipe, key, decode(raw))
        if problem:
            report(
                "T547",
                f"passthrough setting `{key}` is not written: {problem}.",
                "remove it from the recipe's passthrough",
                True,
            )


def accepted(gen: Generated, recipe: Recipe, key: str, value: object) -> bool:
    """Whether the writer would apply this passthrough value and the reader would keep it."""
    probe = Generated(
        config=dict(gen.config),
        datasets=[dict(e) for e in gen.datasets],
        lycoris=None if gen.lycoris is None else json.loads(json.dumps(gen.lycoris)),
    )
    target = _target(probe, recipe, key)
    if target is None or _place(probe, recipe, key, value):
        return False
    container, name = target
    return container.get(name) != _original(gen, recipe, key)


def _original(gen: Generated, recipe: Recipe, key: str) -> object:
    target = _target(gen, recipe, key)
    return None if target is None else target[0].get(target[1])


def _target(gen: Generated, recipe: Recipe, key: str) -> tuple[dict, str] | None:
    """The dict a passthrough key lands in and the name within it."""
    parts = key.split(".")
    if len(parts) == 1:
        return gen.config, key
    head = parts[0]
    if head in ("datasets", "regularization") and len(parts) == 3 and parts[1].isdigit():
        index = int(parts[1])
        count = len(recipe.datasets) if head == "datasets" else len(recipe.regularization)
        if index >= count:
            return None
        position = index if head == "datasets" else len(recipe.datasets) + index
        return gen.datasets[position], parts[2]
    if head == "text_embeds" and len(parts) == 2:
        return gen.datasets[-1], parts[1]
    if head == "lycoris" and gen.lycoris is not None:
        if len(parts) == 2:
            return gen.lycoris, parts[1]
        if len(parts) == 3 and parts[1] == "apply_preset":
            return gen.lycoris.setdefault("apply_preset", {}), parts[2]
    return None


def _place(gen: Generated, recipe: Recipe, key: str, value: object) -> str | None:
    """Put one value in place; the reason it cannot be, or None."""
    target = _target(gen, recipe, key)
    if target is None:
        return "it names no argument, dataset or LyCORIS setting of this config"
    container, name = target
    if container is gen.config:
        problem = _config_problem(recipe, name, value)
    elif gen.lycoris is not None and container is gen.lycoris:
        problem = _lycoris_problem(recipe, name, value)
    elif "apply_preset" in key:
        problem = "the targets are the adapter's `targets`" if name == "target_module" else None
    else:
        problem = f"`{name}` is set from the recipe" if name in CONSUMED_DATASET else None
    if problem is None:
        container[name] = value
    return problem


def _config_problem(recipe: Recipe, name: str, value: object) -> str | None:
    if name == "optimizer" and m.OPTIMIZER_FROM_ST.get(str(value)) == recipe.train.optimizer:
        return opts.check(name, value)
    if name in CONSUMED:
        return f"`{name}` is set from the recipe"
    return opts.check(name, value)


def _lycoris_problem(recipe: Recipe, name: str, value: object) -> str | None:
    if name == "algo":
        return None if lycoris_algo(value) == recipe.adapter.algo else "the algo is the adapter's"
    return f"`{name}` is set from the recipe" if name in CONSUMED_LYCORIS else None


def project(recipe: Recipe) -> dict:
    """The passthrough `read(write(recipe))` keeps."""
    gen = generate(recipe)
    kept = {}
    for key, raw in recipe.passthrough.get("simpletuner", {}).items():
        if accepted(gen, recipe, key, decode(raw)):
            kept[key] = raw
    return kept


def optimizer(config: dict, bag: DiagnosticBag) -> dict:
    """`optimizer` and `optimizer_config` as the recipe's optimizer and its arguments."""
    name = str(config.get("optimizer", "adamw_bf16"))
    if "optimizer" not in config:
        bag.warning(
            "I640",
            "`optimizer` is missing (SimpleTuner requires it); its default "
            "`adamw_bf16` is read as AdamW.",
            "write the optimizer",
        )
    recipe_name = m.OPTIMIZER_FROM_ST.get(name)
    if recipe_name is None:
        bag.warning(
            "I640",
            f"optimizer `{name}` has no recipe equivalent; it is read as AdamW "
            "and kept for SimpleTuner in passthrough.",
            "choose a recipe optimizer",
        )
        recipe_name = "adamw"
    args = parse_optimizer_config(str(config.get("optimizer_config") or ""))
    return {"optimizer": recipe_name, "optimizer_args": args}


def parse_optimizer_config(text: str) -> dict:
    """`d_coef=0.1,use_bias_correction=true` as typed values."""
    args: dict = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if eq and key.strip():
            args[key.strip()] = m.parse_scalar(value.strip())
    return args


def peft_targets(value: object, bag: DiagnosticBag) -> tuple[str, ...]:
    """`peft_lora_target_modules` as recipe targets (absent: SimpleTuner's attention-only)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [v.strip() for v in value.split(",")]
    if not value:
        return ("attention",)
    names = [str(v) for v in value]
    return _groups(names, m.PEFT_TARGETS, "peft_lora_target_modules", bag)


def lycoris_targets(preset: object, bag: DiagnosticBag) -> tuple[str, ...]:
    """`apply_preset.target_module` as recipe targets (absent: SDXL's `Attention` default)."""
    modules = preset.get("target_module") if isinstance(preset, dict) else None
    if not modules:
        return ("attention",)
    names = [str(v) for v in modules]
    if "Transformer2DModel" in names:
        names = [n for n in names if n != "Transformer2DModel"] + ["Attention", "FeedForward"]
    return _groups(names, m.LYCORIS_TARGETS, "apply_preset.target_module", bag)


def _groups(names: list[str], table: dict, what: str, bag: DiagnosticBag) -> tuple[str, ...]:
    found: list[str] = []
    for name in names:
        group = next((g for g, members in table.items() if name in members), None)
        if group and group not in found:
            found.append(group)
    covered = {n for g in found for n in table[g]}
    extra = [n for n in names if n not in covered]
    partial = [g for g in found if not set(table[g]) <= set(names)]
    if partial:
        bag.warning(
            "I646",
            f"{what} covers only part of the {', '.join(partial)} layers; the recipe target "
            "trains all of them.",
            "list every layer of the target, or accept the wider target",
        )
    if extra or not found:
        bag.warning(
            "I646",
            f"{what} lists {', '.join(extra) or 'nothing'}, which no recipe "
            "target covers; the recipe targets are "
            f"{', '.join(found) or 'attention'}.",
            "use attention, ff and conv layers",
        )
    return tuple(found) or ("attention",)
