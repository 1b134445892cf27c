"""Effective sd-scripts settings -> recipe fields, and the pass-through of what is left over.

Every function takes the reading `Context` (read.py) and returns one part of a Recipe.
Mapping notes (kohya key <-> recipe field) are in docs/backends/kohya.md.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from lorafile.backends.kohya import schema as schema
from lorafile.backends.kohya import training_options
from lorafile.backends.kohya import write as kw
from lorafile.backends.kohya.read import (
    APPROX_OPTIMIZERS,
    APPROX_SAMPLERS,
    APPROX_SCHEDULERS,
    DATASET_SOURCES,
    KOHYA_SAMPLERS,
    NOT_SETTINGS,
    OPTIMIZERS,
    SCHEDULERS,
    Context,
)
from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.spec.models import (
    DATASET_KINDS,
    Adapter,
    Base,
    Buckets,
    Cache,
    Dataset,
    Hardware,
    Interval,
    Log,
    Output,
    Regularization,
    Resolution,
    Sample,
    Save,
    Train,
    Warmup,
)

LYCORIS_TARGETS = {v: k for k, v in kw.LYCORIS_PRESETS.items()}


def build(ctx: Context, factory, fallback, what: str):
    """Build one spec model; on a validation error report I614 and use `fallback`."""
    try:
        return factory()
    except ValidationError as err:
        problems = "; ".join(e["msg"] for e in err.errors())
        ctx.error(
            "I614",
            None,
            f"The {what} settings cannot be represented: {problems}.",
            "fix the values in the kohya config",
        )
    try:
        return fallback()
    except ValidationError:
        # Nothing usable is left: stop here with every problem found so far.
        raise DiagnosticError(ctx.bag.items) from None


def unrepresentable(ctx: Context, err: ValidationError) -> None:
    """I614 for each value the recipe as a whole refused (after the per-block `build`s)."""
    for problem in err.errors(include_url=False):
        where = ".".join(str(p) for p in problem["loc"]) or "the config"
        ctx.error(
            "I614",
            None,
            f"`{where}` cannot be represented in a recipe: {problem['msg']}.",
            "fix the value in the kohya config",
        )


def base(ctx: Context) -> Base:
    args = ctx.args
    path = args.get("pretrained_model_name_or_path")
    if not path:
        ctx.error(
            "I613",
            None,
            "The config sets no `pretrained_model_name_or_path`.",
            "add the SDXL base model path",
        )
        path = "sd_xl_base_1.0.safetensors"
    clip_skip = args.get("clip_skip")
    if clip_skip is not None and clip_skip != 2:
        ctx.warning(
            "I621",
            "clip_skip",
            f"sd-scripts ignores `clip_skip = {clip_skip}` for SDXL (both text encoders feed "
            "their penultimate layer), so the recipe leaves clip_skip out.",
            "remove clip_skip from the config; SDXL already uses the penultimate layer",
        )
        clip_skip = None
    return build(
        ctx,
        lambda: Base(
            path=path,
            vae=args.get("vae"),
            clip_skip=clip_skip,
            prediction="v" if args.get("v_parameterization") else "epsilon",
            zero_terminal_snr=bool(args.get("zero_terminal_snr")),
        ),
        lambda: Base(path=path),
        "model",
    )


def network_kwargs(items: list | None) -> dict[str, str]:
    """network_args as sd-scripts passes them to the module: split on the first `=`, later wins."""
    kwargs: dict[str, str] = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        kwargs[key.strip()] = value.strip()
    return kwargs


def adapter(ctx: Context) -> Adapter:
    args = ctx.args
    module = args.get("network_module")
    kwargs = network_kwargs(args.get("network_args"))
    rank = args.get("network_dim") or 4  # networks.lora's fallback when network_dim is unset
    alpha = float(args.get("network_alpha") or rank)  # alpha 0/None means alpha = dim
    if module == "lycoris.kohya":
        algo, targets = _lycoris(ctx, kwargs)
        conv_rank, conv_alpha = kwargs.get("conv_dim", rank), kwargs.get("conv_alpha", alpha)
    else:
        if module != "networks.lora":
            ctx.warning(
                "I615",
                "network_module",
                f"`network_module = {module!r}` has no recipe equivalent; the recipe "
                "describes it as a LoRA and keeps the module as a pass-through setting.",
                "use networks.lora or lycoris.kohya to get a portable recipe",
            )
        algo, targets = "lora", ("attention", "ff")
        if "conv_dim" in kwargs:
            targets = ("attention", "ff", "conv")
        conv_rank, conv_alpha = kwargs.get("conv_dim"), kwargs.get("conv_alpha", 1.0)
    if algo == "lokr" and int(rank) > 1024:
        ctx.warning(
            "I615",
            "network_dim",
            f'LoKr `network_dim = {rank}` (LyCORIS\' "full matrix") is read as rank 1024, '
            "which is full-matrix on every SDXL layer at factor 8 or more.",
            "set factor=8 or more in network_args, or a rank up to 1024",
        )
        rank = 1024
    has_conv = "conv" in targets
    fields = {
        "algo": algo,
        "rank": rank,
        "alpha": alpha,
        "targets": targets,
        "conv_rank": _int(conv_rank) if has_conv else None,
        "conv_alpha": _float(conv_alpha) if has_conv else None,
        "dropout": float(args.get("network_dropout") or 0.0),
        "text_encoder": not args.get("network_train_unet_only"),
        **(_lycoris_extras(ctx, kwargs, algo) if module == "lycoris.kohya" else {}),
    }
    return build(ctx, lambda: Adapter(**fields), lambda: Adapter(algo=algo), "network")


def lycoris_bool(value: object) -> bool:
    """LyCORIS' `str_bool` reading of a network_args value."""
    return str(value).strip().lower() in ("true", "1", "yes", "y", "on")


def _lycoris_extras(ctx: Context, kwargs: dict, algo: str) -> dict:
    """LoKr's `factor` (-1: automatic) and DoRA's `dora_wd` (LyCORIS kohya.py kwargs)."""
    factor = _int(kwargs.get("factor"))
    dora = lycoris_bool(kwargs.get("dora_wd", False))
    if dora and algo != "locon":
        ctx.warning(
            "I615",
            "network_args",
            f"LyCORIS DoRA (`dora_wd`) on {algo} has no recipe equivalent; the recipe "
            "describes it without DoRA and keeps network_args as a pass-through setting.",
            "use DoRA with algo=locon for a portable recipe",
        )
        dora = False
    return {
        "factor": factor if algo == "lokr" and factor is not None and factor > 0 else None,
        "dora": dora,
    }


def _lycoris(ctx: Context, kwargs: dict) -> tuple[str, tuple]:
    algo = kwargs.get("algo", "lora")
    mapped = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr"}.get(algo)
    if mapped is None:
        ctx.warning(
            "I615",
            "network_args",
            f"LyCORIS `algo={algo}` has no recipe equivalent; the recipe calls it locon "
            "and keeps network_args as a pass-through setting.",
            "use algo=locon, loha or lokr for a portable recipe",
        )
        mapped = "locon"
    preset = kwargs.get("preset", "full")
    targets = LYCORIS_TARGETS.get(preset)
    if targets is None:
        ctx.warning(
            "I615",
            "network_args",
            f"LyCORIS `preset={preset}` has no recipe equivalent; the recipe uses the "
            "targets of preset=full and keeps network_args as a pass-through setting.",
            "use preset full, attn-mlp or attn-only for a portable recipe",
        )
        targets = LYCORIS_TARGETS["full"]
    return mapped, targets


def _int(value: object) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def optimizer(ctx: Context) -> tuple[str, dict]:
    args = ctx.args
    name = str(args.get("optimizer_type") or "").lower()
    if not name and args.get("use_8bit_adam"):
        name = "adamw8bit"
    if not name and args.get("use_lion_optimizer"):
        name = "lion"
    for legacy in ("use_8bit_adam", "use_lion_optimizer"):
        if legacy in ctx.flat:
            ctx.corrected.add(legacy)
            ctx.info(
                "I616",
                legacy,
                f"`{legacy}` is a legacy switch; lorafile writes `optimizer_type` instead.",
                "nothing to do",
            )
    if name in OPTIMIZERS:
        family = OPTIMIZERS[name]
    else:
        family = APPROX_OPTIMIZERS.get(name, "prodigy" if name.startswith("dadapt") else "adamw")
        ctx.warning(
            "I616",
            "optimizer_type",
            f"Optimizer `{args.get('optimizer_type')}` has no recipe equivalent; the recipe "
            f"says {family} and keeps the exact optimizer as a pass-through setting.",
            "other targets will train with " + family,
        )
    return family, optimizer_arguments(ctx, family)


def optimizer_arguments(ctx: Context, family: str) -> dict:
    values: dict = {}
    for key, text in schema.optimizer_args(ctx.args).items():
        value = schema.literal(text)
        values[key] = value if isinstance(value, str | int | float | bool) else text
    if family == "adafactor":
        # transformers' Adafactor defaults; the writer adds the fixed-LR trio by itself.
        for key, default in schema.ADAFACTOR_DEFAULTS.items():
            values.setdefault(key, default)
            if values[key] == kw.ADAFACTOR_FIXED_LR[key]:
                del values[key]
    return values


def scheduler(ctx: Context) -> tuple[str, Warmup | None]:
    args = ctx.args
    name = str(args.get("lr_scheduler") or "constant")
    if name not in SCHEDULERS:
        mapped = APPROX_SCHEDULERS.get(name, "constant")
        ctx.warning(
            "I617",
            "lr_scheduler",
            f"Scheduler `{name}` has no recipe equivalent; the recipe says {mapped} and "
            "keeps the exact scheduler as a pass-through setting.",
            "other targets will use " + mapped,
        )
        name = mapped
    warmup = _warmup(args.get("lr_warmup_steps"))
    if warmup is not None and name == "constant":
        ctx.corrected.add("lr_scheduler")
        ctx.error(
            "I605",
            "lr_warmup_steps",
            'Warmup with the `constant` scheduler: sd-scripts raises "constant does not '
            'require `num_warmup_steps`" before training starts.',
            'use lr_scheduler = "constant_with_warmup" (the recipe does), or warmup 0',
        )
        name = "constant_with_warmup"
    return name, warmup


def _warmup(value: object) -> Warmup | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None  # sd-scripts treats a negative warmup as none as well
    if isinstance(value, float):
        # sd-scripts: a float is a ratio of the total steps (get_scheduler_fix).
        percent = round(min(value, 1.0) * 100, 10)
        return Warmup(value=percent, unit="percent") if percent else None
    return Warmup(value=value, unit="steps")


def train(ctx: Context, subsets: list[schema.Subset]) -> Train:
    args = ctx.args
    family, opt_args = optimizer(ctx)
    sched, warmup = scheduler(ctx)
    if args.get("learning_rate") == schema.defaults()["learning_rate"] and not args.get("unet_lr"):
        ctx.warning(
            "I610",
            None,
            "The config sets neither `learning_rate` nor `unet_lr`: "
            "sd-scripts trains the LoRA at its default 2e-6, far too low.",
            "set learning_rate, e.g. 1e-4 for a LoRA",
        )
    batch = next((s.block.get("batch_size") for s in subsets if not s.is_reg), None)
    te_lr = args.get("text_encoder_lr")
    fields = {
        "steps": None if args.get("max_train_epochs") else args.get("max_train_steps"),
        "epochs": args.get("max_train_epochs") or None,
        "batch": batch or args.get("train_batch_size") or 1,
        "accumulate": args.get("gradient_accumulation_steps") or 1,
        "lr": args.get("learning_rate"),
        "unet_lr": args.get("unet_lr"),
        "text_encoder_lr": te_lr[0] if te_lr else None,
        "scheduler": sched,
        "cycles": args.get("lr_scheduler_num_cycles") if sched == "cosine_with_restarts" else None,
        "power": _float(args.get("lr_scheduler_power")) if sched == "polynomial" else None,
        "warmup": warmup,
        "optimizer": family,
        "optimizer_args": opt_args,
        "precision": args.get("mixed_precision") or "no",
        "base_precision": "fp8" if args.get("fp8_base") else None,
        "checkpointing": bool(args.get("gradient_checkpointing")),
        "cache": cache(ctx),
        "noise_offset": args.get("noise_offset") or 0.0,
        **training_options.read_args(args),
        "min_snr_gamma": args.get("min_snr_gamma"),
        "max_grad_norm": args.get("max_grad_norm"),
        "seed": args.get("seed"),
        "memory": ctx.meta.get("train.memory", "manual"),
    }
    if te_lr and len(set(te_lr)) > 1:
        ctx.warning(
            "I620",
            "text_encoder_lr",
            "Several text_encoder_lr values: networks.lora "
            f"and LyCORIS use only the first, {te_lr[0]}, for both SDXL text encoders.",
            "give one value",
        )
    steps = fields["steps"]
    fallback = {"steps": steps if isinstance(steps, int) and steps >= 1 else 1600}
    return build(ctx, lambda: Train(**fields), lambda: Train(**fallback), "training")


def cache(ctx: Context) -> Cache:
    args = ctx.args
    latents = bool(args.get("cache_latents") or args.get("cache_latents_to_disk"))
    text = bool(
        args.get("cache_text_encoder_outputs") or args.get("cache_text_encoder_outputs_to_disk")
    )
    disk = args.get("cache_latents_to_disk") or args.get("cache_text_encoder_outputs_to_disk")
    return Cache(latents=latents, text=text, location="disk" if disk else "memory")


def save(ctx: Context) -> Save:
    args = ctx.args
    precision = {None: "fp32", "float": "fp32", "fp16": "fp16", "bf16": "bf16"}
    every = keep = None
    for unit in ("steps", "epochs"):
        n = args.get(f"save_every_n_{unit}")
        if _positive(n) and every is None:
            every = Interval(every=n, unit=unit)
            window = args.get(f"save_last_n_{unit}")
            if window is not None:
                keep = window // n + 1 if unit == "steps" else window
    return build(
        ctx,
        lambda: Save(
            every=every,
            keep=keep or None,
            precision=precision.get(args.get("save_precision"), "fp32"),
        ),
        Save,
        "saving",
    )


def sample(ctx: Context, prompts: list[dict] | None) -> Sample | None:
    args = ctx.args
    every = None
    for unit in ("epochs", "steps"):  # sample_every_n_epochs wins in sd-scripts
        if _positive(args.get(f"sample_every_n_{unit}")):
            every = Interval(every=args[f"sample_every_n_{unit}"], unit=unit)
            break
    if every is None or not prompts:
        if every is not None:
            ctx.warning(
                "I618",
                "sample_prompts",
                "Sampling is on but lorafile cannot read the "
                f"prompts file {args.get('sample_prompts')!r}; the recipe has no sample "
                "block and keeps the sample settings as pass-through.",
                "pass --sample-prompts FILE",
            )
        return None
    ctx.consumed.add("sample_prompts")
    first = prompts[0]
    _check_prompts_agree(ctx, prompts)
    sampler = sampler_name(ctx, first.get("ss") or args.get("sample_sampler") or "ddim")
    return build(
        ctx,
        lambda: Sample(
            every=every,
            sampler=sampler,
            steps=min(max(first.get("s", 30), 1), 1000),
            cfg=first.get("l", 7.5),
            seed=first.get("d"),
            size=Resolution(width=first.get("w", 512), height=first.get("h", 512)),
            negative=first.get("n", ""),
            prompts=tuple(p["prompt"] for p in prompts),
        ),
        lambda: None,
        "sample",
    )


def _check_prompts_agree(ctx: Context, prompts: list[dict]) -> None:
    first = {k: v for k, v in prompts[0].items() if k != "prompt"}
    for prompt in prompts[1:]:
        if {k: v for k, v in prompt.items() if k != "prompt"} != first:
            ctx.warning(
                "I621",
                "sample_prompts",
                "Sample prompts use different options "
                "(size, seed, steps, ...); a recipe has one set for all prompts and "
                "takes the first prompt's.",
                "give every prompt the same options",
            )
            return


def sampler_name(ctx: Context, name: str) -> str:
    name = name.lower()
    if name in KOHYA_SAMPLERS:
        return KOHYA_SAMPLERS[name]
    mapped = APPROX_SAMPLERS.get(name, "ddim")
    ctx.warning(
        "I622",
        "sample_sampler",
        f"Sampler `{name}` has no exact recipe equivalent; the recipe says {mapped}.",
        "pick one of " + ", ".join(KOHYA_SAMPLERS),
    )
    return mapped


def log(ctx: Context, output_path: str) -> Log:
    args = ctx.args
    to = args.get("log_with") or ("tensorboard" if args.get("logging_dir") else "none")
    to = "tensorboard" if to == "all" else to
    path = args.get("logging_dir")
    if to == "none" or path == f"{output_path}/logs":
        path = None
    return Log(to=to, path=path)


def output(ctx: Context, name: str) -> Output:
    path = ctx.args.get("output_dir")
    if not path:
        ctx.error("I613", None, "The config sets no `output_dir`.", "add output_dir")
        path = "output"
    stem = ctx.args.get("output_name")
    return Output(path=path, name=stem if stem and stem != name else None)


def hardware(ctx: Context, accelerate: dict) -> Hardware:
    fields = dict(accelerate)
    for key in ("gpu", "vram"):
        if ctx.meta.get(f"hardware.{key}") is not None:
            fields[key] = ctx.meta[f"hardware.{key}"]
    return build(ctx, lambda: Hardware(**fields), Hardware, "hardware")


def resolution(value: object) -> Resolution | None:
    """A dataset resolution as sd-scripts accepts it: 1024, [w, h] or the string "w,h"."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not all(p.isdigit() for p in parts) or len(parts) not in (1, 2):
            return None
        value = [int(p) for p in parts]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if isinstance(value, list) and len(value) == 2:
        try:
            return Resolution(width=int(value[0]), height=int(value[1]))
        except (ValidationError, TypeError, ValueError):
            return None
    if isinstance(value, list) and len(value) == 1:
        return resolution(value[0])
    return None


def captions(extension: object) -> str:
    ext = str(extension or ".caption")
    if ext == kw.NO_CAPTIONS_EXTENSION:
        return "trigger"
    return ext[1:] if ext.startswith(".") and len(ext) > 1 else ext


def dataset(ctx: Context, subset: schema.Subset, index: int) -> Dataset:
    p, b = subset.params, subset.block
    res = resolution(b.get("resolution"))
    if res is None:
        ctx.error(
            "I623",
            "resolution",
            f"Dataset {index + 1} has no usable resolution "
            f'({b.get("resolution")!r}); sd-scripts stops with "resolution is required".',
            'set resolution = "1024,1024" (config) or [1024, 1024] (dataset config)',
        )
        res = Resolution(width=1024, height=1024)
    bucket_fields = {
        "enabled": bool(b.get("enable_bucket")),
        "min": b.get("min_bucket_reso"),
        "max": b.get("max_bucket_reso"),
        "step": b.get("bucket_reso_steps"),
        "upscale": not b.get("bucket_no_upscale"),
    }
    buckets = build(ctx, lambda: Buckets(**bucket_fields), Buckets, "bucket")
    fields = {
        "path": str(p.get("image_dir") or "."),
        "kind": _kind(ctx.meta.get(f"datasets.{index}.kind")),
        "captions": captions(p.get("caption_extension")),
        "repeats": p.get("num_repeats") or 1,
        "resolution": res,
        "buckets": buckets,
        "flip": bool(p.get("flip_aug")),
        "color_aug": bool(p.get("color_aug")),
        "shuffle_captions": bool(p.get("shuffle_caption")),
        "keep_tokens": p.get("keep_tokens") or 0,
        "caption_dropout": float(p.get("caption_dropout_rate") or 0.0),
    }
    return build(ctx, lambda: Dataset(**fields), lambda: Dataset(path=fields["path"]), "dataset")


def _kind(value: object) -> str:
    return value if value in DATASET_KINDS else "style"


def regularization(ctx: Context, subset: schema.Subset) -> Regularization:
    p = subset.params
    prompt = str(p.get("class_tokens") or "")
    if not prompt:
        prompt = Path(str(p.get("image_dir") or "reg")).name or "reg"
        ctx.warning(
            "I624",
            None,
            f"Regularization folder {p.get('image_dir')!r} has no class "
            f"tokens; the recipe uses {prompt!r} as its class prompt.",
            "set class_tokens on the regularization subset",
        )
    weight = ctx.args.get("prior_loss_weight")
    return build(
        ctx,
        lambda: Regularization(
            path=str(p.get("image_dir") or "."),
            class_prompt=prompt,
            weight=1.0 if weight is None else weight,
        ),
        lambda: Regularization(path=str(p.get("image_dir") or "."), class_prompt=prompt),
        "regularization",
    )


def trigger(subsets: list[schema.Subset]) -> str | None:
    """The caption prefix of the first training subset (or the class tokens of a trigger-only one)."""
    for subset in subsets:
        if subset.is_reg:
            continue
        if subset.params.get("caption_extension") == kw.NO_CAPTIONS_EXTENSION:
            return str(subset.params.get("class_tokens") or "") or None
        if subset.params.get("caption_prefix"):
            return str(subset.params["caption_prefix"]).strip() or None
    return None


def flat_settings_skipped() -> set[str]:
    """Flat keys that are not compared for the pass-through (the dataset blueprint holds them)."""
    dataset_keys = set(schema.DATASET_KEYS) | set(schema.ARGPARSE_ALIASES.values())
    return dataset_keys | set(DATASET_SOURCES) | set(NOT_SETTINGS)


def _positive(value: object) -> bool:
    """An interval sd-scripts acts on (it never saves or samples for 0 or less)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
