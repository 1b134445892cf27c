"""What a recipe means in SimpleTuner: the mapping tables and the projection.

`normalize(recipe, report)` reduces a recipe to what SimpleTuner can express and reports every
difference through `report(code, message, help, loss)`: `loss=True` is a setting the trainer
cannot express (a T5xx error unless --allow-lossy), `loss=False` a change of meaning that the
output keeps as close as SimpleTuner allows (a warning). The writer serialises the normalized
recipe, so `read(write(r)) == project(r)` holds by construction and the diagnostics live in one
place. Facts: ../shared/reference/simpletuner.md; option table: data/simpletuner_options.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from lorafile.backends.simpletuner import training_options
from lorafile.compiler import dataset_count, vram
from lorafile.compiler.dataset_count import Counts
from lorafile.compiler.hub import parse_hub_ref
from lorafile.spec import Recipe
from lorafile.spec.models import Buckets, Resolution, Warmup

Report = Callable[[str, str, str, bool | None], None]
"""report(code, message, help, lossy): True an error unless --allow-lossy, False a warning,
None information."""

# SimpleTuner's default VAE for SDXL (`--pretrained_vae_model_name_or_path` in the registry).
DEFAULT_VAE = "madebyollin/sdxl-vae-fp16-fix"
# `--validation_negative_prompt` default; an empty string is dropped by cli_utils, so "" cannot
# be written and this is what SimpleTuner uses instead.
DEFAULT_NEGATIVE = "blurry, cropped, ugly"
# SimpleTuner forces `aspect_bucket_alignment=64` for SDXL (helpers/models/sdxl/model.py).
BUCKET_ALIGNMENT = 64

# Recipe optimizer -> `--optimizer` choice (registry CHOICES, optimizer_param.py).
OPTIMIZER_TO_ST = {
    "adamw": "torch-adamw",
    "adamw8bit": "bnb-adamw8bit",
    "adafactor": "torch-adafactor",
    "prodigy": "prodigy",
    "lion": "bnb-lion",
    "lion8bit": "bnb-lion8bit",
    "sgd": "torch-sgd",
}
# `--optimizer` choices read back as the nearest recipe optimizer; the others need passthrough.
OPTIMIZER_FROM_ST = {v: k for k, v in OPTIMIZER_TO_ST.items()} | {
    "torch-adam": "adamw",
    "adamw_bf16": "adamw",
    "optimi-adamw": "adamw",
    "optimi-stableadamw": "adamw",
    "bnb-adamw": "adamw",
    "bnb-adam": "adamw",
    "ao-adamw8bit": "adamw8bit",
    "bnb-adam8bit": "adamw8bit",
    "bnb-adamw8bit-paged": "adamw8bit",
    "optimi-lion": "lion",
    "bnb-lion-paged": "lion",
    "bnb-lion8bit-paged": "lion8bit",
    "optimi-sgd": "sgd",
    "sdnq-adafactor": "adafactor",
}
# Options removed from SimpleTuner that raise a "removed" error (optimizer_param.py).
REMOVED_OPTIMIZERS = {
    "adamw8bit": "bnb-adamw8bit",
    "adafactor": "torch-adafactor",
    "dadaptation": "prodigy",
}

# Recipe sampler -> `--validation_noise_scheduler` choice.
SAMPLER_TO_ST = {
    "euler_a": "euler-a",
    "euler": "euler",
    "ddim": "ddim",
    "ddpm": "ddpm",
    "unipc": "unipc",
    "dpmpp_2m": "dpm++",
}
SAMPLER_FROM_ST = {v: k for k, v in SAMPLER_TO_ST.items()}
# Samplers SimpleTuner lacks, and the nearest one it has.
SAMPLER_NEAREST = {
    "pndm": "ddim",
    "lms": "euler",
    "heun": "euler",
    "dpm_2": "dpmpp_2m",
    "dpm_2_a": "euler_a",
    "dpmpp_2m_karras": "dpmpp_2m",
    "dpmpp_sde": "dpmpp_2m",
}

# Recipe adapter targets -> PEFT module names (diffusers UNet2DConditionModel) for
# `--peft_lora_target_modules`; SimpleTuner's SDXL default is the attention list only.
PEFT_TARGETS = {
    "attention": ("to_k", "to_q", "to_v", "to_out.0"),
    "ff": ("ff.net.0.proj", "ff.net.2"),
    "conv": ("conv1", "conv2", "conv"),
}
# Recipe targets -> LyCORIS `apply_preset.target_module` classes (lycoris preset names).
LYCORIS_TARGETS = {
    "attention": ("Attention",),
    "ff": ("FeedForward",),
    "conv": ("ResnetBlock2D", "Downsample2D", "Upsample2D"),
}

STANDARD_TARGET_ORDER = ("attention", "ff", "conv")


def square_side(resolution: Resolution) -> int:
    """SimpleTuner's one-number `pixel_area` resolution: the side of a square of equal area."""
    if resolution.width == resolution.height:
        return resolution.width
    return round(math.sqrt(resolution.pixels))


def aspect_limits(buckets: Buckets, side: int) -> tuple[float, float]:
    """kohya-style bucket side limits at a `side`² area as SimpleTuner's aspect-ratio limits.

    sd-scripts builds buckets w x min(max, A/w) for widths w from `min` to `max`, both ways
    round (library/model_util.py::make_bucket_resolutions), so the most extreme aspect ratio is
    R = max(max / min(max, A/max), min(max, A/min) / min). SimpleTuner's buckets follow each
    image's own aspect ratio; the same limit is minimum/maximum_aspect_ratio = 1/R and R.
    """
    area = side * side
    ratio = max(
        buckets.max / min(buckets.max, area / buckets.max),
        min(buckets.max, area / buckets.min) / buckets.min,
    )
    return _sig(1 / ratio), _sig(ratio)


def _sig(value: float) -> float:
    # Six significant digits: readable, and exact enough to give back whole pixel sides.
    return float(f"{value:.6g}")


def limits_to_buckets(limits: tuple[float, float] | None, side: int) -> Buckets:
    """Aspect limits read from a dataset entry as recipe buckets (defaults when they match).

    Any R is met by the buckets side/sqrt(R) .. side*sqrt(R), which is what is read back.
    """
    if limits is None or limits == aspect_limits(Buckets(), side):
        return Buckets()
    low_ratio, high_ratio = limits
    ratio = max(high_ratio, 1 / low_ratio if low_ratio > 0 else high_ratio, 1.0)
    low = min(max(round(side / math.sqrt(ratio)), 64), 8192)
    high = min(max(round(side * math.sqrt(ratio)), 64), 8192)
    return Buckets(min=min(low, high), max=max(low, high))


def project_buckets(buckets: Buckets, side: int) -> Buckets:
    """What reading back the written limits gives (the writer keeps the recipe's min/max)."""
    if not buckets.enabled:
        return buckets
    return limits_to_buckets(aspect_limits(buckets, side), side)


def base_precision_for(precision: str) -> str:
    """The base dtype SimpleTuner loads: bf16 unless `base_model_default_dtype=fp32`."""
    return "fp32" if precision == "no" else "bf16"


def checkpoint_count(recipe: Recipe) -> int | None:
    """How many intermediate saves the run makes, when it follows from the recipe alone."""
    every = recipe.save.every
    if every is None:
        return None
    total = recipe.train.steps if every.unit == "steps" else recipe.train.epochs
    return None if total is None else total // every.every


def lycoris_alpha(alpha: float) -> int:
    """SimpleTuner casts `linear_alpha`/`conv_alpha` with int() (trainer.py ~L3410)."""
    return max(1, int(alpha))


def normalize(recipe: Recipe, report: Report, base_dir: Path | None = None) -> Recipe:
    """The recipe as SimpleTuner will run it, reporting each difference (see module doc).

    `base_dir` is the folder relative dataset paths are resolved against (the recipe's folder):
    a warmup percentage of an epoch-counted run needs the images counted there.
    """
    update = {
        "base": _base(recipe, report),
        "datasets": _datasets(recipe, report),
        "regularization": _regularization(recipe, report),
        "adapter": _adapter(recipe, report),
        "train": _train(recipe, report, base_dir),
        "save": _save(recipe, report, base_dir),
        "sample": _sample(recipe, report),
        "hardware": _hardware(recipe, report),
        "output": _output(recipe, report),
        "log": _log(recipe),
        "passthrough": {k: v for k, v in recipe.passthrough.items() if k == "simpletuner"},
    }
    return recipe.model_copy(update=update)


def _base(recipe: Recipe, report: Report):
    base = recipe.base
    if base.clip_skip is not None:
        report(
            "T520",
            f"SimpleTuner has no clip skip setting; `clip_skip {base.clip_skip}` "
            "cannot be written.",
            "remove clip_skip (SDXL already uses the penultimate text-encoder layer)",
            True,
        )
    vae = base.vae
    if vae is None:
        report(
            "T521",
            "SimpleTuner replaces the base model's own VAE with "
            f"`{DEFAULT_VAE}` unless a VAE is given.",
            "set `vae` in the base block to choose the VAE explicitly",
            False,
        )
        vae = DEFAULT_VAE
    path = _hub_file(base.path, "base model", report)
    vae = _hub_file(vae, "VAE", report)
    if vae != base.vae and parse_hub_ref(vae) and parse_hub_ref(vae).revision:
        vae = _hub_revision_dropped(vae, report)
    return base.model_copy(update={"clip_skip": None, "vae": vae, "path": path})


def _hub_file(text: str, what: str, report: Report) -> str:
    """SimpleTuner loads a hub repository by id (and `revision`), not one file inside it."""
    ref = parse_hub_ref(text)
    if ref is None or ref.filename is None:
        return text
    report(
        "T559",
        f"SimpleTuner cannot load one file inside a hub repository; the {what} `{ref}` "
        f"becomes the repository `{ref.repo_id}`.",
        f"download it (`{ref.download_command()}`) and give the local path",
        True,
    )
    return ref.repo_id + (f"@{ref.revision}" if ref.revision else "")


def _hub_revision_dropped(vae: str, report: Report) -> str:
    ref = parse_hub_ref(vae)
    report(
        "T559",
        f"SimpleTuner's `revision` applies to the base model only; the VAE `{ref}` loads at "
        "its default branch.",
        f"download it (`{ref.download_command()}`) and give the local path",
        True,
    )
    return ref.repo_id


def _dataset(ds, index: int, recipe: Recipe, report: Report):
    where = f"dataset {index + 1} (`{ds.path}`)"
    if ds.kind != "style":
        report(
            "T548",
            f"{where} is a {ds.kind} dataset; the kind guides lorafile's lint only "
            "and is not recorded in SimpleTuner's files.",
            "keep the recipe to lint it again",
            False,
        )
    side = square_side(ds.resolution)
    if ds.resolution.width != ds.resolution.height:
        report(
            "T523",
            f"{where} trains at {ds.resolution.width}x{ds.resolution.height}; "
            f"SimpleTuner takes one resolution number, so the area becomes {side}².",
            "use a square resolution; buckets still follow each image's aspect ratio",
            True,
        )
    update: dict = {
        "kind": "style",
        "captions": _captions(ds.captions, recipe, where, report),
        "resolution": Resolution(width=side, height=side),
        "buckets": _buckets(ds.buckets, side, where, report),
        **_augment(ds, where, report),
    }
    if ds.caption_dropout != recipe.datasets[0].caption_dropout:
        report(
            "T529",
            f"{where} has its own caption dropout; SimpleTuner has one global "
            "`caption_dropout_probability`.",
            "use the same caption dropout on every dataset",
            True,
        )
        update["caption_dropout"] = recipe.datasets[0].caption_dropout
    return ds.model_copy(update=update)


def _captions(captions: str, recipe: Recipe, where: str, report: Report) -> str:
    if captions not in ("txt", "filename", "trigger"):
        report(
            "T522",
            f"{where} reads `.{captions}` caption files; SimpleTuner's textfile "
            "strategy reads only `.txt`.",
            "rename the caption files to .txt and use `captions txt`",
            True,
        )
        return "txt"
    if captions == "trigger" and recipe.trigger is None:
        report(
            "T522",
            f"{where} is captioned by the trigger alone but the recipe has no trigger.",
            "add a `trigger`, or caption the images",
            True,
        )
        return "txt"
    return captions


def _buckets(buckets: Buckets, side: int, where: str, report: Report) -> Buckets:
    if not buckets.enabled:
        return Buckets(enabled=False)
    if buckets.step != BUCKET_ALIGNMENT:
        report(
            "T524",
            f"{where} uses a bucket step of {buckets.step}; SimpleTuner aligns SDXL "
            f"buckets to {BUCKET_ALIGNMENT} pixels.",
            "use `step 64`",
            True,
        )
    if not buckets.upscale:
        report(
            "T525",
            f"{where} forbids upscaling into buckets; SimpleTuner has no "
            "per-dataset equivalent of kohya's bucket_no_upscale.",
            "allow upscaling, or remove images smaller than the resolution",
            True,
        )
    return buckets.model_copy(update={"step": BUCKET_ALIGNMENT, "upscale": True})


def _augment(ds, where: str, report: Report) -> dict:
    update: dict = {}
    if ds.flip:
        report(
            "T526",
            f"{where} asks for random flips; SimpleTuner has no flip augmentation.",
            "remove `flip`, or add mirrored copies of the images to the dataset",
            True,
        )
        update["flip"] = False
    if ds.color_aug:
        report(
            "T527",
            f"{where} asks for color augmentation; SimpleTuner has none.",
            "remove `color_aug`",
            True,
        )
        update["color_aug"] = False
    if ds.shuffle_captions:
        report(
            "T528",
            f"{where} shuffles caption tags; SimpleTuner's `caption_shuffle` "
            "pre-computes a few shuffled variants instead of reshuffling every step.",
            "this keeps the intent; set caption_shuffle.count in passthrough for more variants",
            False,
        )
    elif ds.keep_tokens:
        update["keep_tokens"] = 0
    return update


def _datasets(recipe: Recipe, report: Report):
    return tuple(_dataset(ds, i, recipe, report) for i, ds in enumerate(recipe.datasets))


def _regularization(recipe: Recipe, report: Report):
    out = []
    for reg in recipe.regularization:
        where = f"regularization set `{reg.path}`"
        report(
            "T530",
            f"{where}: SimpleTuner's regularisation is a parent-teacher loss (the "
            "base model's own prediction is the target), not kohya's prior-preservation "
            "loss on the class images' noise.",
            "expect a different effect; compare samples without the trigger",
            False,
        )
        if reg.weight != 1.0:
            report(
                "T531",
                f"{where} has prior-loss weight {reg.weight}; SimpleTuner has no "
                "weight for its regularisation loss.",
                "use `weight 1.0`",
                True,
            )
        if reg.ratio != 1.0:
            report(
                "T532",
                f"{where}: ratio {reg.ratio} becomes the dataset's sampling "
                "`probability`; SimpleTuner draws batches in proportion to dataset size "
                "times probability, not a fixed ratio.",
                "check the regularisation share in SimpleTuner's dataset summary",
                False,
            )
        out.append(reg.model_copy(update={"weight": 1.0}))
    return tuple(out)


def _adapter(recipe: Recipe, report: Report):
    adapter = recipe.adapter
    update: dict = {}
    if "conv" not in adapter.targets:
        update.update(conv_rank=None, conv_alpha=None)
    if adapter.algo == "lora":
        conv_differs = (
            adapter.effective_conv_rank != adapter.rank
            or adapter.effective_conv_alpha != adapter.effective_alpha
        )
        if "conv" in adapter.targets and conv_differs:
            report(
                "T534",
                "SimpleTuner's PEFT LoRA has one rank and alpha for every layer; "
                "the separate conv rank/alpha cannot be written.",
                "use `adapter locon` for a separate conv rank, or drop conv_rank/conv_alpha",
                True,
            )
        update.update(conv_rank=None, conv_alpha=None)
        return adapter.model_copy(update=update)
    if adapter.text_encoder:
        report(
            "T534",
            "SimpleTuner's LyCORIS adapters train the UNet only; the text encoders "
            "cannot be trained with them.",
            "use `adapter lora` to train the text encoders",
            True,
        )
        update["text_encoder"] = False
    update["alpha"] = float(_int_alpha("alpha", adapter.effective_alpha, report))
    if "conv" in adapter.targets:
        update["conv_rank"] = adapter.effective_conv_rank
        update["conv_alpha"] = float(_int_alpha("conv_alpha", adapter.effective_conv_alpha, report))
    return adapter.model_copy(update=update)


def _int_alpha(name: str, alpha: float, report: Report) -> int:
    value = lycoris_alpha(alpha)
    if value != alpha:
        report(
            "T533",
            f"SimpleTuner casts LyCORIS `{name}` {alpha} to the integer {value} "
            "(int() in trainer.py).",
            f"use a whole-number {name}",
            True,
        )
    return value


def _train(recipe: Recipe, report: Report, base_dir: Path | None):
    train = recipe.train
    lr = train.unet_lr or train.lr
    # `graphs`: a speed setting of the native trainer only (SimpleTuner never captures).
    update: dict = {"lr": lr, "unet_lr": None, "text_encoder_lr": None, "graphs": True}
    te_lr = train.text_encoder_lr if train.text_encoder_lr is not None else train.lr
    if recipe.adapter.text_encoder and recipe.adapter.algo == "lora" and te_lr != lr:
        report(
            "T535",
            f"SimpleTuner reads `text_encoder_lr` as an integer, so a text-encoder "
            f"learning rate of {te_lr} cannot be written; the text encoders train at {lr}.",
            "use the same learning rate for the UNet and the text encoders",
            True,
        )
    counts = _epoch_counts(recipe, base_dir)
    update["warmup"] = _warmup(recipe, report, counts)
    _epoch_length(recipe, report, counts)
    if train.power == 1.0:
        update["power"] = None  # the recipe default; SimpleTuner's is 0.8, so it is written
    update["optimizer_args"] = _optimizer_args(train.optimizer_args, report)
    update["base_precision"] = _base_precision(train, report)
    update["cache"] = _cache(train, report)
    if train.checkpointing == "auto":
        update["checkpointing"] = _auto_checkpointing(recipe, report)
    update["min_snr_gamma"] = _snr(train.min_snr_gamma, report)
    update.update(training_options.normalize(recipe, report))
    if train.memory == "auto":
        report(
            "T546",
            "`memory auto` is applied by lorafile's native trainer only; SimpleTuner "
            "gets the memory settings written in the recipe.",
            "run `lorafile lint` to pick memory settings, then write them into the recipe",
            False,
        )
        update["memory"] = "manual"
    return train.model_copy(update=update)


def _epoch_counts(recipe: Recipe, base_dir: Path | None) -> Counts | None:
    """The images SimpleTuner will find, when an epoch-counted run needs them (names only)."""
    train = recipe.train
    percent = train.warmup is not None and train.warmup.unit == "percent"
    if train.epochs is None or not (percent or recipe.regularization):
        return None
    return dataset_count.count_recipe(recipe, dataset_count.SIMPLETUNER, base_dir)


def _warmup(recipe: Recipe, report: Report, counts: Counts | None) -> Warmup | None:
    train = recipe.train
    warmup = train.warmup
    if warmup is None or warmup.unit == "steps":
        return None if warmup is None or warmup.value == 0 else warmup
    if train.steps is not None:
        steps = warmup.steps(train.steps)
        return Warmup(value=steps) if steps else None
    # `lr_warmup_steps` is an int argument (no ratio form, no warmup-ratio option), so the
    # percentage needs the run's length: SimpleTuner's own arithmetic over the counted images.
    run = dataset_count.simpletuner_steps(recipe, counts)
    if run is None:
        report("T536", _uncounted(warmup, counts), _uncounted_help(recipe, counts), True)
        return None
    steps = warmup.steps(run.total)
    estimate = "" if run.exact else _BUCKET_NOTE
    report(
        "T550",
        f"warmup {warmup.value:g}% of {train.epochs} epochs is written as "
        f"`lr_warmup_steps: {steps}`, counted from the dataset folders: {run.how}; "
        f"{warmup.value:g}% of {run.total} is {steps}.{estimate}",
        "the number holds only while the folders keep these images: compile again after "
        "adding or removing images, or give the warmup in steps",
        False,
    )
    return Warmup(value=steps) if steps else None


_BUCKET_NOTE = (
    " With batch > 1 this assumes each dataset's images share one aspect bucket; images of "
    "different shapes add partial batches, so the run can be a little longer than counted."
)


def _epoch_length(recipe: Recipe, report: Report, counts: Counts | None) -> None:
    """T551: with regularization, SimpleTuner's epoch is not the recipe's (kohya's) epoch."""
    if counts is None or not recipe.regularization:
        return
    ratio = recipe.regularization[0].ratio
    ours = dataset_count.simpletuner_steps(recipe, counts)
    gpus = recipe.hardware.gpus * recipe.hardware.machines
    meant = dataset_count.recipe_steps(recipe, counts, gpus)
    lead = (
        "an epoch in SimpleTuner passes once over every regularisation image, where the "
        f"recipe (like kohya and lorafile's trainer) means {ratio:g} regularization sample(s) "
        "per training sample"
    )
    if ours is None or meant is None:
        report(
            "T551",
            f"{lead}, so `epochs {recipe.train.epochs}` can be a different number of steps.",
            "compile where the dataset folders are to see both step counts, or give the run "
            "in `steps`",
            False,
        )
    elif ours.total != meant.total:
        report(
            "T551",
            f"{lead}: `epochs {recipe.train.epochs}` is {ours.total} steps in SimpleTuner "
            f"({ours.how}) against {meant.total} in the recipe's meaning ({meant.how}).",
            f"to train as long as the recipe means, write `steps {meant.total}` instead of "
            f"`epochs {recipe.train.epochs}` (valid while the folders keep these images)",
            False,
        )


def _uncounted_help(recipe: Recipe, counts: Counts) -> str:
    """What to do, with the per-image arithmetic so a warmup in steps is one multiplication."""
    train = recipe.train
    share = train.warmup.value / 100 * train.epochs / (train.batch * train.accumulate)
    terms = " + ".join(
        f"{share * f.repeats:.3g} × the images in `{f.path}`" for f in counts.folders
    )
    return (
        f"give the warmup in steps: `warmup N` with N ≈ {terms} ({train.warmup.value:g}% of "
        f"{train.epochs} epochs × repeats / batch {train.batch} / accumulation "
        f"{train.accumulate}); or compile where the dataset folders are, so that lorafile "
        "counts the images; or pass --allow-lossy to write `lr_warmup_steps: 0` (no warmup)"
    )


def _uncounted(warmup: Warmup, counts: Counts) -> str:
    why = "SimpleTuner's `lr_warmup_steps` counts steps and the run's step count "
    if counts.missing:
        where = "; ".join(f"`{f.folder}` {f.why_missing}" for f in counts.missing)
        why += f"needs the images, but {where}"
    else:
        why += "needs the images, but the folders have fewer images than one batch"
    return f"warmup {warmup.value:g}% of a run measured in epochs cannot be written: {why}."


def _optimizer_args(args: dict, report: Report) -> dict:
    kept = {}
    for key, value in args.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not key or key != key.strip() or any(c in key + text for c in ",=\n\r"):
            report(
                "T537",
                f"optimizer argument `{key}={value}` cannot be written into "
                "SimpleTuner's comma-separated `optimizer_config`.",
                "use a single scalar value, or set optimizer_beta1/2 in passthrough",
                True,
            )
            continue
        # SimpleTuner reads the text back; numbers and booleans come back typed.
        kept[key] = parse_scalar(text.strip())
    return kept


def _base_precision(train, report: Report) -> str | None:
    wanted = train.effective_base_precision
    default = base_precision_for(train.precision)
    # mixed_precision=no runs everything in fp32; otherwise base_model_default_dtype picks.
    allowed = ("fp32",) if train.precision == "no" else ("bf16", "fp32")
    if wanted not in allowed:
        report(
            "T538",
            f"SimpleTuner cannot load the SDXL base weights in {wanted} here (it "
            f"loads {' or '.join(allowed)}, and rejects fp8-quanto for SDXL).",
            f"use base precision {' or '.join(allowed)}",
            True,
        )
        wanted = default
    return None if wanted == default else wanted


def _auto_checkpointing(recipe: Recipe, report: Report) -> bool:
    """SimpleTuner has no `auto`: the VRAM model chooses against the recipe's hardware."""
    _, choices = vram.resolve_auto(recipe, vram.hardware_budget(recipe), "simpletuner", "cuda")
    chosen = vram.choice_for(choices, "checkpointing")
    report(
        "T584",
        f"`checkpointing auto` is written as gradient_checkpointing: "
        f"{'true' if chosen.value else 'false'} ({chosen.reason}).",
        "write `checkpointing on` or `off` to choose it yourself",
        None,
    )
    return bool(chosen.value)


def _cache(train, report: Report):
    cache = train.cache
    if cache.is_auto:
        report(
            "T584",
            "`cache auto`: SimpleTuner caches VAE latents and text embeddings to disk always.",
            "nothing to do",
            None,
        )
    elif not (cache.latents and cache.text and cache.location == "disk"):
        report(
            "T539",
            "SimpleTuner always caches VAE latents and text embeddings to disk "
            "(cache_dir_vae, text_embeds cache_dir).",
            "nothing to do; caching is exact without augmentation",
            False,
        )
    return cache.model_copy(update={"latents": True, "text": True, "location": "disk"})


def _snr(gamma: float | None, report: Report) -> float | None:
    if gamma is None:
        return None
    whole = max(1, round(gamma))
    if whole != gamma:
        report(
            "T540",
            f"SimpleTuner reads `snr_gamma` as an integer; {gamma} becomes {whole}.",
            "use a whole-number min_snr_gamma",
            True,
        )
    return float(whole)


def _save(recipe: Recipe, report: Report, base_dir: Path | None):
    save = recipe.save
    update: dict = {"precision": "fp16"}
    if save.precision != "fp16":
        report(
            "T541",
            f"SimpleTuner has no setting for the saved adapter's dtype, so "
            f"`precision {save.precision}` is not written; it saves in its training dtype.",
            "convert the file afterwards with `lorafile convert`",
            False,
        )
    if recipe.adapter.algo != "lora" and save.layout == "kohya":
        report(
            "T541",
            "SimpleTuner saves LyCORIS adapters with `lycoris_` keys; "
            "`lora_format: comfyui` only converts PEFT LoRA files.",
            "ComfyUI loads SimpleTuner LyCORIS files directly; test them in your UI",
            False,
        )
    count = checkpoint_count(recipe)
    keep = save.keep
    if save.every is not None and count is None:
        if keep is None:
            report(
                "T542",
                "SimpleTuner keeps 5 checkpoints by default and the number this "
                "run makes is unknown, so `keep all` cannot be written.",
                _keep_help(recipe, base_dir),
                True,
            )
            keep = 5
    elif save.every is None or (keep is not None and keep >= count):
        keep = None
    update["keep"] = keep
    return save.model_copy(update=update)


def _keep_help(recipe: Recipe, base_dir: Path | None) -> str:
    """T542's help: the checkpoint count, as far as the recipe and the images tell it."""
    every, train = recipe.save.every, recipe.train
    counts = dataset_count.count_recipe(recipe, dataset_count.SIMPLETUNER, base_dir)
    if every.unit == "epochs":  # a steps-counted run: every epoch has at least one step
        most = train.steps // every.every
        text = f"set `keep N` in the save statement: this run makes at most {most} checkpoints"
        epoch = dataset_count.simpletuner_steps(recipe, counts, epochs=1)
        if epoch is not None:
            about = train.steps // epoch.per_epoch // every.every
            text += f", about {about} with the images there now ({epoch.per_epoch} steps per epoch)"
        return text
    run = dataset_count.simpletuner_steps(recipe, counts)
    if run is None:
        return (
            "set `keep N` in the save statement; compile where the dataset folders are to "
            "have the run's length counted"
        )
    return (
        f"set `keep N` in the save statement: with the images there now the run is {run.total} "
        f"steps ({run.how}), about {run.total // every.every} checkpoints"
    )


def _sample(recipe: Recipe, report: Report):
    sample = recipe.sample
    if sample is None:
        return None
    update: dict = {}
    prompts = tuple(p for p in sample.prompts if p.strip())
    if len(prompts) != len(sample.prompts):
        # cli_utils strips each value and drops it when nothing is left.
        report(
            "T544",
            "SimpleTuner drops blank validation prompts; "
            f"{len(sample.prompts) - len(prompts)} of the sample prompts are blank.",
            "remove the blank prompts",
            True,
        )
        if not prompts:
            return None
        update["prompts"] = prompts
    if sample.sampler not in SAMPLER_TO_ST:
        nearest = SAMPLER_NEAREST[sample.sampler]
        report(
            "T543",
            f"SimpleTuner has no `{sample.sampler}` validation scheduler; the "
            f"nearest is `{nearest}`.",
            f"use `sampler {nearest}`",
            True,
        )
        update["sampler"] = nearest
    if sample.negative == "":
        report(
            "T544",
            "SimpleTuner drops an empty validation negative prompt and uses "
            f'"{DEFAULT_NEGATIVE}" instead.',
            "give a `negative` prompt to choose it",
            False,
        )
        update["negative"] = DEFAULT_NEGATIVE
    return sample.model_copy(update=update)


def _hardware(recipe: Recipe, report: Report):
    hw = recipe.hardware
    if hw.gpu is not None or hw.vram is not None:
        report(
            "T545",
            "the GPU model and VRAM are used by lorafile's VRAM lint only; "
            "SimpleTuner's files do not record them.",
            "keep the recipe next to the config to lint it again",
            False,
        )
    if hw.machines > 1 or hw.main_address or hw.main_port:
        report(
            "T545",
            "multi-machine settings are not written; SimpleTuner takes them from "
            "the accelerate config.",
            "configure `accelerate config` on each machine",
            True,
        )
    return hw.model_copy(
        update={"gpu": None, "vram": None, "machines": 1, "main_address": None, "main_port": None}
    )


def _output(recipe: Recipe, report: Report):
    out = recipe.output
    if out.name is not None and out.name != recipe.name:
        report(
            "T548",
            f"SimpleTuner names the adapter `pytorch_lora_weights.safetensors`; "
            f"the file name `{out.name}` cannot be set.",
            "rename the file after training",
            False,
        )
    return out.model_copy(update={"name": None})


def _log(recipe: Recipe):
    # SimpleTuner's `logging_dir` default is `logs` (under output_dir), the recipe's default too.
    if recipe.log.path == "logs":
        return recipe.log.model_copy(update={"path": None})
    return recipe.log


def parse_scalar(text: str) -> object:
    """A command-line or config.env value as SimpleTuner's argparse would type it."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if kind is int or math.isfinite(value) else text
    return text
