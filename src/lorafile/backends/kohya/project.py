"""What of a recipe kohya sd-scripts can express: `project(recipe)` and the T5xx reasons.

Two kinds of change: *canonical* ones (spelling only, no meaning lost: alpha None -> rank,
warmup 0 -> none, constant + warmup -> constant_with_warmup) and *lossy* ones, each with a T5xx
diagnostic (T501-T519, docs/diagnostics.md). The writer writes `project(recipe)`, so that
`read(write(r)) == project(r)` for every valid recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorafile.backends.kohya import schema as schema
from lorafile.backends.kohya import training_options
from lorafile.backends.kohya import write as kw
from lorafile.backends.kohya.options import OPTIONS
from lorafile.compiler import vram
from lorafile.compiler.hub import parse_hub_ref
from lorafile.spec.models import TARGETS, Recipe

# Nearest sample_sampler for recipe samplers sd-scripts lacks.
SAMPLER_FALLBACK = {
    "ddpm": "ddim",
    "dpmpp_2m_karras": "dpmpp_2m",
    "dpmpp_sde": "dpmpp_2m",
    "unipc": "dpmpp_2m",
}
# Flat keys the reader takes from elsewhere: a pass-through copy would not survive a round trip.
NOT_PASSABLE = {
    "train_data_dir",
    "reg_data_dir",
    "dataset_config",
    "in_json",
    "config_file",
    "output_config",
    "train_batch_size",
    "dataset_repeats",
    "caption_extention",
    "use_8bit_adam",
    "use_lion_optimizer",
}


# Flat keys the reader always maps into a recipe field exactly: set the field, not a copy.
OWNED = {
    "pretrained_model_name_or_path",
    "vae",
    "clip_skip",
    "v_parameterization",
    "zero_terminal_snr",
    "fp8_base",
    "network_dim",
    "network_alpha",
    "network_dropout",
    "network_train_unet_only",
    "unet_lr",
    "text_encoder_lr",
    "learning_rate",
    "lr_warmup_steps",
    "max_grad_norm",
    "max_train_steps",
    "max_train_epochs",
    "gradient_accumulation_steps",
    "mixed_precision",
    "gradient_checkpointing",
    "seed",
    "noise_offset",
    *training_options.OWNED,
    "min_snr_gamma",
    "prior_loss_weight",
    "cache_latents",
    "cache_latents_to_disk",
    "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk",
    "output_dir",
    "output_name",
    "save_precision",
    "save_every_n_steps",
    "log_with",
    "logging_dir",
}
# Owned only while the recipe has a sample block (without one they pass through verbatim).
SAMPLE_KEYS = {"sample_prompts"}


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    help: str = ""
    lossy: bool = True
    """False: informational (nothing the run depends on is lost)."""


class Reasons(list):
    """The T5xx reasons found; `add` says whether to apply the lossy change it explains."""

    def __init__(self, apply: bool = True):
        super().__init__()
        self.apply = apply

    def add(self, reason: Reason) -> bool:
        self.append(reason)
        return self.apply or not reason.lossy


def project(recipe: Recipe, lossy: bool = True) -> tuple[Recipe, list[Reason]]:
    """The recipe as kohya can run it, and why each change was made.

    `lossy=False` applies only the canonical (meaning-preserving) changes: the property tests
    compare both results to check that every lossy change has its T5xx reason.
    """
    reasons = Reasons(apply=lossy)
    recipe = _resolve_auto(recipe, reasons)
    data = recipe.model_dump()
    for step in (
        _base,
        _options,
        _adapter,
        _ema,
        _train,
        _datasets,
        _regularization,
        _sample,
        _save,
        _misc,
        _passthrough,
    ):
        step(data, reasons)
    result = Recipe.model_validate(data)
    if _overrides_fields(result.passthrough.get("kohya", {})):
        result = _settle(result)
    return result, reasons


def _resolve_auto(recipe: Recipe, reasons: Reasons) -> Recipe:
    """sd-scripts has no `auto`: the VRAM model chooses against the recipe's hardware."""
    keys = {"checkpointing": "gradient_checkpointing", "cache latents": "cache_latents",
            "cache text": "cache_text_encoder_outputs"}  # fmt: skip
    recipe, choices = vram.resolve_auto(recipe, vram.hardware_budget(recipe), "kohya", "cuda")
    # `graphs` is a speed setting of the native trainer (same numbers either way); sd-scripts
    # never captures, and its configs read back with the default.
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"graphs": True})})
    for c in choices:
        reasons.add(
            Reason(
                "T583",
                f"`{c.setting} auto` is written as {keys[c.setting]} = "
                f"{'true' if c.value else 'false'} ({c.reason}).",
                "write `checkpointing on` or `off`"
                if c.setting == "checkpointing"
                else "write `cache latents text` or `cache off` to choose it yourself",
                lossy=False,
            )
        )
    return recipe


# Pass-through keys that replace what the writer derives from recipe fields: the reader maps
# them back into those fields, so the projection is the recipe as kohya will read it.
SETTLED = {"network_module", "network_args", "optimizer_type", "optimizer_args", "lr_scheduler",
           "lr_scheduler_num_cycles", "lr_scheduler_power", "save_every_n_epochs",
           "save_last_n_steps", "save_last_n_epochs", "sample_sampler",
           "sample_every_n_steps", "sample_every_n_epochs"}  # fmt: skip
SETTLED_DATASET = {"resolution", "batch_size", "enable_bucket", "min_bucket_reso",
                   "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale", "num_repeats",
                   "caption_extension", "caption_prefix", "class_tokens", "shuffle_caption",
                   "keep_tokens", "flip_aug", "color_aug", "caption_dropout_rate"}  # fmt: skip


def _overrides_fields(kohya: dict) -> bool:
    return any(k in SETTLED or k.rsplit(".", 1)[-1] in SETTLED_DATASET for k in kohya)


def _settle(recipe: Recipe) -> Recipe:
    """The recipe as the reader sees its own output, when pass-through overrides fields."""
    import tempfile
    from pathlib import Path

    from lorafile.backends.kohya.load import read_config
    from lorafile.compiler.diagnostics import DiagnosticBag

    files, _ = kw.write_files(recipe)
    with tempfile.TemporaryDirectory() as folder:
        for name, text in files.items():
            (Path(folder) / name).write_text(text, encoding="utf-8")
        return read_config(Path(folder) / "config.toml", DiagnosticBag())


def _adapter(data: dict, reasons: Reasons) -> None:
    a = data["adapter"]
    if a["dora"] and a["algo"] == "lora":
        a["algo"] = "locon"  # DoRA needs LyCORIS, whose LoCon on these targets is a LoRA
    targets = tuple(t for t in TARGETS if t in a["targets"])
    allowed = (
        kw.LYCORIS_PRESETS
        if a["algo"] != "lora"
        else {("attention", "ff"): 1, ("attention", "ff", "conv"): 1}
    )
    if targets not in allowed:
        near = ("attention", "ff", "conv") if "conv" in targets else ("attention", "ff")
        if reasons.add(
            Reason(
                "T507",
                f"kohya's {_module(a['algo'])} cannot train only "
                f"{', '.join(targets)}; it would train {', '.join(near)}.",
                "use targets attention ff [conv] (or attention alone for LyCORIS)",
            )
        ):
            targets = near
    a["targets"] = targets
    rank = a["rank"]
    a["alpha"] = float(a["alpha"] if a["alpha"] is not None else rank)
    if "conv" in targets:
        conv = a["conv_rank"] or rank
        a["conv_rank"] = conv
        a["conv_alpha"] = float(a["conv_alpha"] if a["conv_alpha"] is not None else conv)
    else:
        a["conv_rank"] = a["conv_alpha"] = None
    if (
        a["algo"] in ("loha", "lokr")
        and a["dropout"]
        and reasons.add(
            Reason(
                "T510",
                f"LyCORIS {'LoHa' if a['algo'] == 'loha' else 'LoKr'} has no dropout "
                '("LoHa/LoKr haven\'t implemented normal dropout yet"); dropout is not applied.',
                "remove dropout from the adapter, or use locon",
            )
        )
    ):
        a["dropout"] = 0.0


def _ema(data: dict, reasons: Reasons) -> None:
    if data["ema"] is not None and reasons.add(
        Reason(
            "T582",
            "sd-scripts' sdxl_train_network.py keeps no moving average of the network weights "
            "(EMA exists only in other trainers); no EMA file is written.",
            "remove the `ema` statement, or train with the native trainer or SimpleTuner",
        )
    ):
        data["ema"] = None


def _module(algo: str) -> str:
    return "networks.lora" if algo == "lora" else "lycoris.kohya"


def _train(data: dict, reasons: Reasons) -> None:
    t = data["train"]
    t["cycles"] = (t["cycles"] or 1) if t["scheduler"] == "cosine_with_restarts" else None
    t["power"] = float(t["power"] or 1.0) if t["scheduler"] == "polynomial" else None
    warmup = t["warmup"]
    if warmup is not None and warmup["unit"] == "percent":
        warmup["value"] = round(min(warmup["value"] / 100, 1.0) * 100, 10)
    if warmup is not None and warmup["value"] == 0:
        t["warmup"] = warmup = None
    if warmup is not None and t["scheduler"] == "constant":
        # sd-scripts refuses warmup with `constant`; constant_with_warmup is what it means.
        t["scheduler"] = "constant_with_warmup"
    t["optimizer_args"] = _optimizer_args(t["optimizer_args"], reasons)
    if t["optimizer"] == "adafactor":
        t["optimizer_args"] = {
            k: v
            for k, v in t["optimizer_args"].items()
            if kw.ADAFACTOR_FIXED_LR.get(k, object()) != v
        }
    _precision(data, reasons)
    _cache(data, reasons)


def _optimizer_args(args: dict, reasons: Reasons) -> dict:
    kept = {}
    for key, value in args.items():
        text = value if isinstance(value, str) else ""
        # A leading comma: the `toml` package sd-scripts reads with splits the array there.
        bad = not key or key != key.strip() or key.startswith(",") or "=" in key or "=" in text
        if bad and reasons.add(
            Reason(
                "T515",
                f"The optimizer argument {key!r} = {value!r} cannot be written as `key=value`: "
                "sd-scripts splits it at every `=` (and its TOML reader at a leading comma).",
                "use a plain name and a value without `=`",
            )
        ):
            continue
        kept[key] = _literal_value(value)
    return kept


def _literal_value(value: object) -> object:
    """What an optimizer arg reads back as after `key=value` (ast.literal_eval in sd-scripts)."""
    if isinstance(value, str):
        parsed = schema.literal(value)
        return parsed if isinstance(parsed, int | float | bool) else value
    return value


def _precision(data: dict, reasons: Reasons) -> None:
    t = data["train"]
    default = "fp32" if t["precision"] == "no" else t["precision"]
    base = t["base_precision"]
    if base is None or base == default:
        t["base_precision"] = None
        return
    if base == "fp8" and t["precision"] != "no":
        return
    why = (
        "fp8_base needs mixed precision"
        if base == "fp8"
        else "sd-scripts keeps the frozen weights in the mixed-precision dtype"
    )
    if reasons.add(
        Reason(
            "T504",
            f"kohya cannot hold the base model in {base} with precision {t['precision']}: {why}.",
            "drop base_precision or change precision",
        )
    ):
        t["base_precision"] = None


def _cache(data: dict, reasons: Reasons) -> None:
    c = data["train"]["cache"]
    if c["text"]:
        shuffles = any(d["shuffle_captions"] or d["caption_dropout"] for d in data["datasets"])
        if data["adapter"]["text_encoder"] or shuffles:
            why = (
                "the text encoders are trained"
                if data["adapter"]["text_encoder"]
                else "captions are shuffled or dropped"
            )
            if reasons.add(
                Reason(
                    "T505",
                    f"kohya cannot cache text-encoder outputs when {why} "
                    "(sdxl_train_network asserts it); they are not cached.",
                    "remove `cache text`, or train the UNet only with fixed captions",
                )
            ):
                c["text"] = False
    if (
        c["latents"]
        and any(d["color_aug"] for d in data["datasets"])
        and reasons.add(
            Reason(
                "T506",
                "kohya cannot cache latents with color augmentation "
                "(sd-scripts asserts it); latents are not cached.",
                "remove color_aug or `cache latents`",
            )
        )
    ):
        c["latents"] = False
    if not c["latents"] and not c["text"]:
        c["location"] = "memory"


def _datasets(data: dict, reasons: Reasons) -> None:
    trigger = (data["trigger"] or "").strip()
    data["trigger"] = trigger or None
    for d in data["datasets"]:
        if d["captions"] in ("filename", kw.NO_CAPTIONS_EXTENSION[1:]) and reasons.add(
            Reason(
                "T509",
                f"kohya cannot take captions from `{d['captions']}` "
                f"for {d['path']}; it reads .txt caption files instead.",
                "write the captions into .txt files beside the images",
            )
        ):
            d["captions"] = "txt"
        b = d["buckets"]
        if b["step"] % 32:
            step = max(32, round(b["step"] / 32) * 32)
            if reasons.add(
                Reason(
                    "T511",
                    f"SDXL in sd-scripts needs a bucket step divisible "
                    f"by 32; {b['step']} becomes {step}.",
                    f"use step {step}",
                )
            ):
                b["step"] = step
        _bucket_range(d, reasons)


def _bucket_range(d: dict, reasons: Reasons) -> None:
    b, res = d["buckets"], d["resolution"]
    if not b["enabled"]:
        return
    low, high = min(res["width"], res["height"]), max(res["width"], res["height"])
    if b["min"] <= low and b["max"] >= high:
        return
    if reasons.add(
        Reason(
            "T512",
            f"sd-scripts needs the bucket range {b['min']}..{b['max']} "
            f"to contain the resolution {res['width']}x{res['height']}; it is "
            "widened.",
            "give buckets a range that contains the resolution",
        )
    ):
        b["min"], b["max"] = min(b["min"], low), max(b["max"], high)


SDXL_CLIP_LAYER = 2
"""sdxl_train_util's text encoding: hidden_states[11] of CLIP-L (12 layers) and
hidden_states[-2] of OpenCLIP-G, the penultimate layers, whatever clip_skip says."""


def _base(data: dict, reasons: Reasons) -> None:
    """sd-scripts hands a name that is not a file to diffusers' `from_pretrained` with no
    revision (a hub id loads at its default branch) and cannot load one file inside a repo."""
    base = data["base"]
    for field in ("path", "vae"):
        ref = parse_hub_ref(base[field] or "")
        if ref is None or (ref.revision is None and ref.filename is None):
            continue
        if reasons.add(
            Reason(
                "T518",
                f"sd-scripts loads hub models by repo id only; `{ref}` becomes `{ref.repo_id}` "
                "(its default branch, a diffusers folder).",
                f"download it (`{ref.download_command()}`) and give the local path",
            )
        ):
            base[field] = ref.repo_id
    if base["clip_skip"] not in (None, SDXL_CLIP_LAYER) and reasons.add(
        Reason(
            "T517",
            f"sd-scripts ignores clip_skip for SDXL: both text encoders always feed their "
            f"penultimate layer (clip_skip 2); `clip_skip {base['clip_skip']}` is not written.",
            "remove clip_skip, or train natively to use another layer",
        )
    ):
        base["clip_skip"] = None
    if base["variant"] is not None and reasons.add(
        Reason(
            "T518",
            f"sd-scripts picks the weight variant itself (fp16 files only when it trains in "
            f"fp16); `variant {base['variant']}` is not written.",
            "nothing to do",
            lossy=False,
        )
    ):
        base["variant"] = None


def _options(data: dict, reasons: Reasons) -> None:
    training_options.project(data, reasons, Reason)


def _regularization(data: dict, reasons: Reasons) -> None:
    regs = data["regularization"]
    for r in regs:
        if r["ratio"] != 1.0 and reasons.add(
            Reason(
                "T502",
                f"kohya always uses as many regularization images as "
                f"training images per epoch (1:1); ratio {r['ratio']} for "
                f"{r['path']} cannot be expressed.",
                "use ratio 1:1",
            )
        ):
            r["ratio"] = 1.0
    weights = [r["weight"] for r in regs]
    if len(set(weights)) > 1 and reasons.add(
        Reason(
            "T503",
            "kohya has one prior_loss_weight for all regularization "
            f"folders; the weights {weights} become {weights[0]}.",
            "give every regularization folder the same weight",
        )
    ):
        for r in regs:
            r["weight"] = weights[0]


def _sample(data: dict, reasons: Reasons) -> None:
    s = data["sample"]
    if s is None:
        return
    if s["sampler"] in SAMPLER_FALLBACK:
        near = SAMPLER_FALLBACK[s["sampler"]]
        if reasons.add(
            Reason(
                "T501",
                f"kohya has no `{s['sampler']}` sampler; samples use {near}.",
                "pick one of " + ", ".join(kw.SAMPLERS),
            )
        ):
            s["sampler"] = near
    for side in ("width", "height"):
        if s["size"][side] % 8 and reasons.add(
            Reason(
                "T516",
                f"sd-scripts rounds the sample {side} down to a "
                f"multiple of 8: {s['size'][side]} becomes "
                f"{s['size'][side] // 8 * 8}.",
                "use a multiple of 8",
            )
        ):
            s["size"][side] = s["size"][side] // 8 * 8
    s["negative"] = _prompt_text(s["negative"], "negative prompt", reasons)
    prompts = [_prompt_text(p, "prompt", reasons) for p in s["prompts"]]
    kept = [p for p in prompts if not p.startswith("#")]
    if len(kept) != len(prompts) and not reasons.add(
        Reason(
            "T516",
            "sd-scripts skips prompt lines that start with `#`.",
            "do not start a prompt with #",
        )
    ):
        kept = prompts
    s["prompts"] = kept
    if not kept:
        data["sample"] = None


def _prompt_text(text: str, what: str, reasons: Reasons) -> str:
    clean = " ".join(text.splitlines()) if len((text + "x").splitlines()) > 1 else text
    # The negative follows `--n `, so a leading `--` there also starts a new option.
    probe = clean if what == "prompt" else " " + clean.strip()
    if " --" in probe:
        clean = probe.split(" --")[0]
        apply = reasons.add(
            Reason(
                "T516",
                f"A {what} containing ` --` is cut there by sd-scripts' prompt-line format.",
                "remove ` --` from the text",
            )
        )
    elif clean != text:
        apply = reasons.add(
            Reason(
                "T516",
                f"A {what} must fit on one line in sample_prompts.txt.",
                "remove the line break",
            )
        )
    else:
        apply = True
    # Surrounding spaces are not meaning: the prompt line reader strips them.
    return clean.strip() if apply else text.strip()


def _save(data: dict, reasons: Reasons) -> None:
    s = data["save"]
    if s["layout"] != "kohya" and reasons.add(
        Reason(
            "T508",
            "sd-scripts saves LoRA files in the kohya layout only.",
            "use layout kohya, or convert afterwards with `lorafile convert`",
        )
    ):
        s["layout"] = "kohya"
    if s["every"] is None:
        s["keep"] = None


def _misc(data: dict, reasons: Reasons) -> None:
    out, log = data["output"], data["log"]
    if not out["name"] or out["name"] == data["name"]:
        out["name"] = None
    if log["to"] == "none" or log["path"] == f"{out['path']}/logs":
        log["path"] = None


def _passthrough(data: dict, reasons: Reasons) -> None:
    passthrough = data["passthrough"]
    for trainer in [t for t in passthrough if t != "kohya"]:
        if reasons.add(
            Reason(
                "T513",
                f"The {trainer} pass-through settings are not used for kohya.",
                "nothing to do",
                lossy=False,
            )
        ):
            del passthrough[trainer]
    kohya = passthrough.get("kohya")
    if kohya is None:
        return
    for key, value in list(kohya.items()):
        why = passable(key, value, data)
        if why and reasons.add(
            Reason(
                "T514",
                f"The kohya pass-through setting `{key}` {why}; it is not written.",
                "fix or remove it in the pass-through block",
            )
        ):
            del kohya[key]
    _drop_redundant(data, kohya)
    if not kohya:
        del passthrough["kohya"]


def _drop_redundant(data: dict, kohya: dict) -> None:
    """Pass-through values equal to what the recipe writes anyway change nothing: drop them."""
    from lorafile.backends.kohya.compare import same, same_dataset_value

    # Compared with what the fully projected recipe writes (also when only canonicalising).
    bare = project(Recipe.model_validate({**data, "passthrough": {}}))[0]
    written = {**schema.defaults(), **kw.flat_config(bare)}
    candidate = {**written, **{k: v for k, v in kohya.items() if "." not in k}}
    for key, value in list(kohya.items()):
        if passable(key, value, data):
            continue
        if "." not in key:
            if same(key, value, written.get(key), candidate, written):
                del kohya[key]
            continue
        group, index, name = key.split(".")
        i = int(index)
        if group == "datasets":
            entry = kw.dataset_entry(bare, i)
        else:
            entry = {**kw.dataset_entry(bare, 0), **kw.regularization_entry(bare, i)}
        new = entry.get(name)
        if new is None:
            new = schema.argparse_fallback(written, name)
        if new is not None and same_dataset_value(name, value, new):
            del kohya[key]


def passable(key: str, value: object, data: dict) -> str:
    """'' when a kohya pass-through entry can be written and read back, else why not."""
    if key.startswith(("datasets.", "regularization.")):
        return _passable_nested(key, value, data)
    if key not in OPTIONS:
        return "is not an sd-scripts argument"
    if key in NOT_PASSABLE or key in OWNED or (key in SAMPLE_KEYS and data["sample"] is not None):
        return "is set by lorafile from a recipe field"
    from lorafile.backends.kohya.read import _coerce

    option = OPTIONS[key]
    if option.is_list:
        return "" if isinstance(value, list) else "must be a list"
    _, problem = _coerce(option.type, value)
    return problem


def _passable_nested(key: str, value: object, data: dict) -> str:
    parts = key.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return "is not of the form datasets.N.key"
    group, index, name = parts[0], int(parts[1]), parts[2]
    if index >= len(data[group]):
        return f"names {group[:-1] if group == 'datasets' else group} {index}, which does not exist"
    if name not in schema.DATASET_KEYS or name in ("image_dir", "is_reg", "custom_attributes"):
        return "is not a dataset-config key"
    types, _ = schema.DATASET_KEYS[name]
    if isinstance(value, bool) and bool not in types:
        return "has the wrong type"
    if not isinstance(value, types):
        return "has the wrong type"
    return ""
