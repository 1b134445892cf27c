"""`Recipe` to its canonical recipe text: the inverse of compiler/parse.py.

The canonical form lists statements in a fixed order, indents blocks by four spaces, separates
top-level statements by a blank line, and omits every setting that equals its default (so a
recipe shows only what differs from lorafile's defaults). `parse_recipe(format_recipe(r)) == r`
for every valid `r`; tests/compiler/test_format_roundtrip.py checks it on generated recipes.
"""

from __future__ import annotations

import json
import re

from lorafile.spec import models as m
from lorafile.spec import units

INDENT = "    "
_BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_ATOM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def format_source(text: str, file: str | None = None) -> str:
    """Recipe text to its canonical form, keeping its comments (what `lorafile fmt` prints).

    Raises `DiagnosticError` when the text is not a valid recipe.
    """
    from lorafile.compiler.comments import collect, reattach
    from lorafile.compiler.diagnostics import DiagnosticBag
    from lorafile.compiler.parse import parse_recipe
    from lorafile.compiler.syntax import parse_statements

    recipe = parse_recipe(text, file)
    stmts = parse_statements(text, DiagnosticBag()) or []
    return reattach(format_recipe(recipe), collect(text, stmts))


def format_recipe(recipe: m.Recipe) -> str:
    """The canonical text of `recipe`, ending with a newline."""
    parts = [
        [f"recipe {quote(recipe.name)}"],
        _base(recipe.base),
        *(_dataset(d) for d in recipe.datasets),
        [f"trigger {quote(recipe.trigger)}"] if recipe.trigger is not None else [],
        *(_regularization(r) for r in recipe.regularization),
        _adapter(recipe.adapter),
        _train(recipe.train),
        _ema(recipe.ema),
        _save(recipe.save),
        _sample(recipe.sample) if recipe.sample else [],
        _hardware(recipe.hardware),
        _output(recipe.output),
        _log(recipe.log),
        *(_passthrough(name, values) for name, values in recipe.passthrough.items()),
    ]
    return "\n\n".join("\n".join(lines) for lines in parts if lines) + "\n"


# ---- Values ---------------------------------------------------------------------------------


def quote(text: str) -> str:
    """A double-quoted string with JSON escapes."""
    return json.dumps(text, ensure_ascii=False)


def name_or_quote(text: str) -> str:
    return text if _BARE_NAME.fullmatch(text) else quote(text)


def switch(value: bool) -> str:
    return "on" if value else "off"


def number(value: float | int) -> str:
    return units.format_number(value)


def raw(value: m.PassValue) -> str:
    """A pass-through value: "text", 12, 0.5, true, [a, b]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return units.format_number(value, keep_float=True)
    if isinstance(value, list):
        return "[" + ", ".join(raw(item) for item in value) + "]"
    return quote(value)


def interval(every: m.Interval) -> str:
    return f"every {every.every} {every.unit}"


def block(head: str, lines: list[str]) -> list[str]:
    """`head { lines }`, or just `head` when there are no lines."""
    if not lines:
        return [head]
    return [f"{head} {{", *(INDENT + line for line in lines), "}"]


def _fields(model: m.Spec, spelled: list[tuple[str, str]]) -> list[str]:
    """`statement value` for each (field, statement) whose value differs from the default."""
    lines = []
    for field, statement in spelled:
        value = getattr(model, field)
        if value == type(model).model_fields[field].default:
            continue
        if isinstance(value, bool):
            text = switch(value)
        elif isinstance(value, int | float):
            text = number(value)
        else:
            text = value
        lines.append(f"{statement} {text}")
    return lines


# ---- Statements -----------------------------------------------------------------------------


def _base(base: m.Base) -> list[str]:
    lines = [f"vae {quote(base.vae)}"] if base.vae is not None else []
    lines += _fields(
        base,
        [
            ("variant", "variant"),
            ("prediction", "prediction"),
            ("zero_terminal_snr", "zero_terminal_snr"),
            ("clip_skip", "clip_skip"),
        ],
    )
    return block(f"base {base.family} {quote(base.path)}", lines)


def _dataset(dataset: m.Dataset) -> list[str]:
    lines = _fields(dataset, [("kind", "kind")])
    if dataset.captions != "txt":
        captions = dataset.captions
        lines.append(f"captions {captions if _BARE_ATOM.fullmatch(captions) else quote(captions)}")
    lines += _fields(dataset, [("repeats", "repeats")])
    if dataset.resolution != m.Dataset.model_fields["resolution"].default:
        res = dataset.resolution
        lines.append(f"resolution {units.format_resolution(res.width, res.height)}")
    if dataset.buckets != m.Buckets():
        lines.append(_buckets(dataset.buckets))
    lines += _fields(dataset, [("flip", "flip"), ("color_aug", "color_aug")])
    if dataset.shuffle_captions:
        keep = f" keep {dataset.keep_tokens}" if dataset.keep_tokens else ""
        lines.append(f"shuffle_captions on{keep}")
    elif dataset.keep_tokens:
        lines.append(f"keep_tokens {dataset.keep_tokens}")
    if dataset.caption_dropout:
        lines.append(f"caption_dropout {units.format_fraction_percent(dataset.caption_dropout)}")
    return block(f"dataset {quote(dataset.path)}", lines)


def _buckets(buckets: m.Buckets) -> str:
    default = m.Buckets()
    words = ["buckets"]
    if not buckets.enabled:
        words.append("off")
    if (buckets.min, buckets.max) != (default.min, default.max):
        words.append(f"{buckets.min}..{buckets.max}")
    if buckets.step != default.step:
        words.append(f"step {buckets.step}")
    if not buckets.upscale:
        words.append("no_upscale")
    return " ".join(words)


def _regularization(reg: m.Regularization) -> list[str]:
    lines = [f"class {quote(reg.class_prompt)}"]
    if reg.ratio != 1.0:
        lines.append(f"ratio {units.format_ratio(reg.ratio)}")
    lines += _fields(reg, [("weight", "weight")])
    return block(f"regularization {quote(reg.path)}", lines)


def _adapter(adapter: m.Adapter) -> list[str]:
    lines = _fields(adapter, [("rank", "rank"), ("alpha", "alpha")])
    if adapter.targets != m.default_targets(adapter.algo):
        lines.append("targets " + " ".join(adapter.targets))
    lines += _fields(adapter, [("conv_rank", "conv_rank"), ("conv_alpha", "conv_alpha")])
    if adapter.dropout:
        lines.append(f"dropout {units.format_fraction_percent(adapter.dropout)}")
    lines += _fields(
        adapter, [("text_encoder", "text_encoder"), ("factor", "factor"), ("dora", "dora")]
    )
    if not lines and adapter.algo == "lora":
        return []
    return block(f"adapter {adapter.algo}", lines)


def _train(train: m.Train) -> list[str]:
    lines = _fields(
        train,
        [
            ("steps", "steps"),
            ("epochs", "epochs"),
            ("batch", "batch"),
            ("accumulate", "accumulate"),
        ],
    )
    lr_line = _lr(train)
    if lr_line:
        lines.append(lr_line)
    lines += _fields(train, [("unet_lr", "unet_lr"), ("text_encoder_lr", "text_encoder_lr")])
    lines += _optimizer(train)
    lines += _fields(
        train,
        [
            ("precision", "precision"),
            ("base_precision", "base_precision"),
            ("checkpointing", "checkpointing"),
        ],
    )
    if train.cache != m.Cache():
        lines.append(_cache(train.cache))
    lines += _fields(train, [("noise_offset", "noise_offset")])
    if train.noise_offset_probability != 1.0:
        probability = units.format_fraction_percent(train.noise_offset_probability)
        lines.append(f"noise_offset_probability {probability}")
    lines += _fields(
        train,
        [
            ("multires_noise_iterations", "multires_noise_iterations"),
            ("multires_noise_discount", "multires_noise_discount"),
            ("ip_noise_gamma", "ip_noise_gamma"),
        ],
    )
    if (train.min_timestep, train.max_timestep) != (0, m.NUM_TIMESTEPS):
        lines.append(f"timesteps {train.min_timestep}..{train.max_timestep}")
    if train.timestep_bias is not None:
        lines.append(_timestep_bias(train.timestep_bias))
    lines += _fields(
        train,
        [
            ("loss", "loss"),
            ("huber_schedule", "huber_schedule"),
            ("huber_c", "huber_c"),
            ("debiased_estimation", "debiased_estimation"),
            ("min_snr_gamma", "min_snr_gamma"),
            ("max_grad_norm", "max_grad_norm"),
            ("seed", "seed"),
            ("memory", "memory"),
            ("graphs", "graphs"),
        ],
    )
    return block("train", lines)


def _timestep_bias(bias: m.TimestepBias) -> str:
    words = ["timestep_bias", bias.strategy]
    if bias.strategy == "range":
        words.append(f"{bias.begin}..{bias.end}")
    words.append(number(bias.multiplier))
    if bias.portion != m.TimestepBias.model_fields["portion"].default:
        words += ["portion", units.format_fraction_percent(bias.portion)]
    return " ".join(words)


def _ema(ema: m.Ema | None) -> list[str]:
    if ema is None:
        return []
    if ema == m.Ema():
        return ["ema"]
    return [f"ema decay {number(ema.decay)}"]


def _cache(cache: m.Cache) -> str:
    if cache.is_auto:
        words = ["auto"]
    else:
        words = [w for w in ("latents", "text") if getattr(cache, w)] or ["off"]
    words += ["disk"] if cache.location == "disk" else []
    return "cache " + " ".join(words)


def _lr(train: m.Train) -> str:
    defaults = m.Train.model_fields
    words = [f"lr {number(train.lr)}"]
    if train.scheduler != "constant" or train.cycles is not None or train.power is not None:
        words.append(train.scheduler)
    if train.cycles is not None:
        words.append(str(train.cycles))
    if train.power is not None:
        words.append(number(train.power))
    if train.warmup is not None:
        warmup = train.warmup
        value = (
            units.format_percent(warmup.value)
            if warmup.unit == "percent"
            else str(int(warmup.value))
        )
        words.append(f"warmup {value}")
    if len(words) == 1 and train.lr == defaults["lr"].default:
        return ""
    return " ".join(words)


def _optimizer(train: m.Train) -> list[str]:
    if train.optimizer == m.Train.model_fields["optimizer"].default and not train.optimizer_args:
        return []
    head = f"optimizer {train.optimizer}"
    if not train.optimizer_args:
        return [head]
    args = [f"{name_or_quote(k)} {raw(v)}" for k, v in train.optimizer_args.items()]
    return [f"{head} {{", *(INDENT + line for line in args), "}"]


def _save(save: m.Save) -> list[str]:
    words = ["save"]
    if save.every is not None:
        words.append(interval(save.every))
    if save.keep is not None:
        words.append(f"keep {save.keep}")
    lines = _fields(save, [("format", "format"), ("precision", "precision"), ("layout", "layout")])
    if len(words) == 1 and not lines:
        return []
    return block(" ".join(words), lines)


def _sample(sample: m.Sample) -> list[str]:
    lines = _fields(
        sample, [("sampler", "sampler"), ("steps", "steps"), ("cfg", "cfg"), ("seed", "seed")]
    )
    if sample.size != m.Sample.model_fields["size"].default:
        lines.append(
            f"size {units.format_resolution(sample.size.width, sample.size.height, False)}"
        )
    if sample.negative:
        lines.append(f"negative {quote(sample.negative)}")
    lines += [f"prompt {quote(p)}" for p in sample.prompts]
    return block(f"sample {interval(sample.every)}", lines)


def _hardware(hardware: m.Hardware) -> list[str]:
    lines = [f"gpu {quote(hardware.gpu)}"] if hardware.gpu is not None else []
    if hardware.vram is not None:
        lines.append(f"vram {units.format_size(hardware.vram)}")
    lines += _fields(hardware, [("gpus", "gpus"), ("machines", "machines")])
    if hardware.main_address is not None:
        lines.append(f"main_address {quote(hardware.main_address)}")
    lines += _fields(hardware, [("main_port", "main_port")])
    return block("hardware", lines) if lines else []


def _output(output: m.Output) -> list[str]:
    lines = [f"name {quote(output.name)}"] if output.name is not None else []
    return block(f"output {quote(output.path)}", lines)


def _log(log: m.Log) -> list[str]:
    if log == m.Log():
        return []
    path = f" {quote(log.path)}" if log.path is not None else ""
    return [f"log {log.to}{path}"]


def _passthrough(trainer: str, values: dict[str, m.PassValue]) -> list[str]:
    head = f"passthrough {name_or_quote(trainer)}"
    if not values:
        return [head + " {}"]
    lines = [f"{name_or_quote(k)} {raw(v)}" for k, v in values.items()]
    return [f"{head} {{", *(INDENT + line for line in lines), "}"]
