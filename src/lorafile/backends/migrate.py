"""Migration between trainers: read one trainer's config, write the other's, report the change.

Migration is `target.write(source.read(x))` (DESIGN.md); this module adds the report a person
needs to trust it: a table of each source setting next to the target setting it became, every
change of meaning (target diagnostics that keep the intent), every loss (settings the target
cannot express, and the source trainer's own pass-through settings, which no other trainer
reads), and the fields that read back differently from the migrated files.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.backends import base
from lorafile.backends.load import load_input
from lorafile.compiler.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError
from lorafile.files import is_dir, real_path
from lorafile.spec.models import Recipe

TRAINERS = {"kohya": "kohya sd-scripts", "simpletuner": "SimpleTuner"}

# Recipe field -> how each trainer spells it (docs/backends/*.md have the full tables).
# `[]` stands for any dataset or regularization index.
SPELLING: dict[str, tuple[str, str]] = {
    "name": ("output_name / header", "tracker_run_name"),
    "base.path": ("pretrained_model_name_or_path", "pretrained_model_name_or_path"),
    "base.vae": ("vae", "pretrained_vae_model_name_or_path"),
    "base.prediction": ("v_parameterization", "prediction_type"),
    "base.clip_skip": ("clip_skip", "(none)"),
    "datasets[].path": ("image_dir / train_data_dir", "instance_data_dir"),
    "datasets[].captions": ("caption_extension", "caption_strategy"),
    "datasets[].repeats": ("num_repeats (N)", "repeats (N-1)"),
    "datasets[].resolution": ("resolution", "resolution + resolution_type"),
    "datasets[].buckets.enabled": ("enable_bucket", "crop"),
    "datasets[].buckets.min": ("min_bucket_reso", "minimum_aspect_ratio"),
    "datasets[].buckets.max": ("max_bucket_reso", "maximum_aspect_ratio"),
    "datasets[].buckets.step": ("bucket_reso_steps", "(64 for SDXL)"),
    "datasets[].buckets.upscale": ("bucket_no_upscale", "(none)"),
    "datasets[].flip": ("flip_aug", "(none)"),
    "datasets[].color_aug": ("color_aug", "(none)"),
    "datasets[].shuffle_captions": ("shuffle_caption", "caption_shuffle.enable"),
    "datasets[].keep_tokens": ("keep_tokens", "caption_shuffle.position_start"),
    "datasets[].caption_dropout": ("caption_dropout_rate", "caption_dropout_probability"),
    "datasets[].kind": ("(none)", "(none)"),
    "trigger": ("class_tokens", "instance_prompt + prepend_instance_prompt"),
    "regularization[].path": ("reg_data_dir / is_reg subset", "is_regularisation_data dataset"),
    "regularization[].class_prompt": ("class_tokens", "instance_prompt"),
    "regularization[].ratio": ("(repeats)", "probability"),
    "regularization[].weight": ("prior_loss_weight", "(none)"),
    "adapter.algo": ("network_module + algo", "lora_type + lycoris algo"),
    "adapter.rank": ("network_dim", "lora_rank / linear_dim"),
    "adapter.alpha": ("network_alpha", "lora_alpha / linear_alpha"),
    "adapter.targets": ("network_args", "peft_lora_target_modules / apply_preset"),
    "adapter.conv_rank": ("conv_dim", "conv_dim"),
    "adapter.conv_alpha": ("conv_alpha", "conv_alpha"),
    "adapter.dropout": ("network_dropout", "lora_dropout / dropout"),
    "adapter.text_encoder": ("network_train_unet_only (inverted)", "train_text_encoder"),
    "adapter.factor": ("network_args factor", "lycoris factor"),
    "adapter.dora": ("network_args dora_wd", "use_dora / lycoris dora_wd"),
    "ema.decay": ("(none)", "use_ema + ema_decay"),
    "train.steps": ("max_train_steps", "max_train_steps"),
    "train.epochs": ("max_train_epochs", "num_train_epochs"),
    "train.batch": ("train_batch_size", "train_batch_size"),
    "train.accumulate": ("gradient_accumulation_steps", "gradient_accumulation_steps"),
    "train.lr": ("learning_rate", "learning_rate"),
    "train.unet_lr": ("unet_lr", "learning_rate"),
    "train.text_encoder_lr": ("text_encoder_lr", "(none)"),
    "train.scheduler": ("lr_scheduler", "lr_scheduler"),
    "train.cycles": ("lr_scheduler_num_cycles", "lr_num_cycles"),
    "train.power": ("lr_scheduler_power", "lr_power"),
    "train.warmup": ("lr_warmup_steps", "lr_warmup_steps"),
    "train.optimizer": ("optimizer_type", "optimizer"),
    "train.optimizer_args": ("optimizer_args", "optimizer_config"),
    "train.precision": ("mixed_precision", "mixed_precision"),
    "train.base_precision": ("full_bf16 / full_fp16 / fp8_base", "base_model_default_dtype"),
    "train.checkpointing": ("gradient_checkpointing", "gradient_checkpointing"),
    "train.cache.latents": ("cache_latents", "(always)"),
    "train.cache.text": ("cache_text_encoder_outputs", "(always)"),
    "train.cache.location": ("cache_latents_to_disk", "(disk)"),
    "train.noise_offset": ("noise_offset", "offset_noise + noise_offset"),
    "train.min_snr_gamma": ("min_snr_gamma", "snr_gamma"),
    "train.max_grad_norm": ("max_grad_norm", "max_grad_norm + grad_clip_method"),
    "train.seed": ("seed", "seed"),
    "train.memory": ("(none)", "(none)"),
    "save.every": ("save_every_n_steps / _epochs", "checkpoint_step / epoch_interval"),
    "save.keep": ("save_last_n_steps / _epochs", "checkpoints_total_limit"),
    "save.precision": ("save_precision", "(none)"),
    "save.layout": ("(kohya keys)", "lora_format"),
    "sample.every": ("sample_every_n_steps / _epochs", "validation_step / epoch_interval"),
    "sample.sampler": ("sample_sampler", "validation_noise_scheduler"),
    "sample.steps": ("--s in sample_prompts", "validation_num_inference_steps"),
    "sample.cfg": ("--l in sample_prompts", "validation_guidance"),
    "sample.seed": ("--d in sample_prompts", "validation_seed"),
    "sample.size": ("--w --h in sample_prompts", "validation_resolution"),
    "sample.negative": ("--n in sample_prompts", "validation_negative_prompt"),
    "sample.prompts": ("sample_prompts", "validation_prompt + user_prompt_library"),
    "hardware.gpu": ("(none)", "(none)"),
    "hardware.vram": ("(none)", "(none)"),
    "hardware.gpus": ("accelerate num_processes", "TRAINING_NUM_PROCESSES"),
    "hardware.machines": ("accelerate num_machines", "(accelerate config)"),
    "output.path": ("output_dir", "output_dir"),
    "output.name": ("output_name", "(pytorch_lora_weights)"),
    "log.to": ("log_with", "report_to"),
    "log.path": ("logging_dir", "logging_dir"),
}


# Fields every table shows, default or not: what is trained, on what, for how long.
ALWAYS_SHOWN = (
    "name",
    ".path",
    "class_prompt",
    "train.steps",
    "train.epochs",
    "train.lr",
    "adapter.algo",
    "adapter.rank",
    "datasets[0].repeats",
)


@dataclass
class Row:
    """One setting: its recipe field, how each trainer spells it, and its value on each side."""

    field: str
    source_key: str
    source_value: str
    target_key: str
    target_value: str


@dataclass
class Report:
    source: str
    target: str
    source_path: str
    out_dir: str
    rows: list[Row] = field(default_factory=list)
    imported: list[Diagnostic] = field(default_factory=list)
    """What reading the source found (I6xx)."""
    changes: list[Diagnostic] = field(default_factory=list)
    """Target diagnostics that keep the intent but change the meaning (T5xx warnings)."""
    losses: list[str] = field(default_factory=list)
    """Settings that do not survive, each with its reason."""
    differences: list[tuple[str, str, str]] = field(default_factory=list)
    """(field, before, after) for every field that reads back differently."""

    @property
    def lossy(self) -> bool:
        return bool(self.losses)


def migrate(
    source: Path, to: str, options: dict | None = None, target_options: dict | None = None
) -> tuple[Report, Recipe, dict[str, str], set]:
    """Read `source`, write `to`'s files; (report, source recipe, files, executable names)."""
    loaded = load_input(source, **(options or {}))
    _check_direction(loaded.kind, to, source)
    recipe = loaded.recipe
    report = Report(loaded.kind, to, str(source), "")
    report.imported = list(loaded.diagnostics)
    strict = DiagnosticBag()
    target = _backend(to, allow_lossy=False, options=_target_options(target_options, source))
    compiled = target.write(recipe, strict)
    for diag in strict:
        if diag.is_error:
            report.losses.append(f"[{diag.code}] {diag.message}")
        else:
            report.changes.append(diag)
    for trainer, settings in recipe.passthrough.items():
        if trainer != to:
            for key, value in settings.items():
                report.losses.append(
                    f"`{key} = {_value(value)}` is a {TRAINERS.get(trainer, trainer)} setting "
                    f"with no recipe equivalent; {TRAINERS.get(to, to)} does not read it."
                )
    back = _read_back(target, compiled.files)
    report.rows = table(recipe, back, loaded.kind, to)
    report.differences = differences(recipe, back)
    return report, recipe, compiled.files, set(compiled.executable)


def _check_direction(kind: str, to: str, source: Path) -> None:
    if kind == "recipe" or kind == to:
        bag = DiagnosticBag(file=str(source))
        what = "a recipe" if kind == "recipe" else f"already a {TRAINERS[to]} config"
        bag.error(
            "I655",
            f"`{source}` is {what}; migrate converts between trainers.",
            f"use `lorafile compile {shlex.quote(str(source))} --target {to}`"
            if kind == "recipe"
            else "choose the other trainer with --to",
        )
        raise DiagnosticError(bag.items)


def _target_options(options: dict | None, source: Path) -> dict:
    # Relative dataset paths are counted next to the source config, as `compile` counts them
    # next to its input: an epoch-counted warmup % becomes steps for SimpleTuner (T550).
    folder = source if is_dir(source) else source.parent
    return {"base_dir": real_path(folder), **(options or {})}


def _backend(name: str, allow_lossy: bool, options: dict | None):
    backend = base.get(name, allow_lossy=allow_lossy)
    if options and hasattr(backend, "options"):
        backend.options.update(options)
    return backend


def _read_back(target, files: dict[str, str]) -> Recipe | None:
    """The migrated files read by the target's own reader (None if it cannot read them)."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text, encoding="utf-8")
        entry = root / "config.toml" if (root / "config.toml").is_file() else root
        try:
            return target.read(entry, DiagnosticBag())
        except Exception:
            return None


def flatten(recipe: Recipe | None) -> dict[str, object]:
    """Leaf fields by path (`datasets[0].repeats`), passthrough left out."""
    if recipe is None:
        return {}
    out: dict[str, object] = {}
    _walk(recipe.model_dump(exclude={"passthrough"}), "", out)
    return out


def _walk(value: object, prefix: str, out: dict) -> None:
    if isinstance(value, dict) and value and prefix not in ("train.optimizer_args",):
        if (
            set(value) <= {"width", "height"}
            or set(value) <= {"every", "unit"}
            or (set(value) <= {"value", "unit"})
        ):
            out[prefix] = value
            return
        for key, item in value.items():
            _walk(item, f"{prefix}.{key}" if prefix else key, out)
    elif isinstance(value, list | tuple) and value and isinstance(value[0], dict):
        for i, item in enumerate(value):
            _walk(item, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value


def _spelling(path: str) -> tuple[str, str]:
    generic = path
    for head in ("datasets", "regularization"):
        if path.startswith(head + "["):
            generic = head + "[]" + path[path.index("]") + 1 :]
    return SPELLING.get(generic, (path, path))


def table(recipe: Recipe, back: Recipe | None, source: str, target: str) -> list[Row]:
    """Rows for every field the source sets (not the recipe default) or the target changes."""
    before, after = flatten(recipe), flatten(back)
    defaults = _defaults(recipe)
    rows = []
    for path, value in before.items():
        new = after.get(path, None) if back is not None else "(not read back)"
        always = path.endswith(ALWAYS_SHOWN) or path in ALWAYS_SHOWN
        if (not always and value == defaults.get(path, object()) and new == value) or (
            value is None and new is None
        ):
            continue
        keys = _spelling(path)
        rows.append(Row(path, _key(keys, source), _value(value), _key(keys, target), _value(new)))
    return rows


def _key(keys: tuple[str, str], trainer: str) -> str:
    return keys[1] if trainer == "simpletuner" else keys[0]


def _defaults(recipe: Recipe) -> dict[str, object]:
    """Each field's value in a minimal recipe with the same required parts."""
    minimal = Recipe.model_validate(
        {
            "name": recipe.name,
            "base": {"path": recipe.base.path},
            "datasets": [{"path": d.path} for d in recipe.datasets],
            "regularization": [
                {"path": r.path, "class_prompt": r.class_prompt} for r in recipe.regularization
            ],
            "train": {"steps": recipe.train.steps, "epochs": recipe.train.epochs},
            "output": {"path": recipe.output.path},
        }
    )
    return flatten(minimal)


def differences(recipe: Recipe, back: Recipe | None) -> list[tuple[str, str, str]]:
    if back is None:
        return [("(all)", "the source settings", "the migrated files could not be read back")]
    before, after = flatten(recipe), flatten(back)
    return [
        (p, _value(before.get(p)), _value(after.get(p)))
        for p in sorted(set(before) | set(after), key=_order(before, after))
        if before.get(p) != after.get(p)
    ]


def _order(before: dict, after: dict):
    order = {p: i for i, p in enumerate([*before, *[p for p in after if p not in before]])}
    return lambda p: order[p]


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        if set(value) == {"width", "height"}:
            return f"{value['width']}x{value['height']}"
        if set(value) == {"every", "unit"}:
            return f"{value['every']} {value['unit']}"
        if set(value) == {"value", "unit"}:
            unit = "%" if value["unit"] == "percent" else " steps"
            return f"{value['value']:g}{unit}"
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value) or "-"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def render(report: Report, markdown: bool = False) -> str:
    """The report as text for the terminal, or as Markdown for --report."""
    src, dst = TRAINERS.get(report.source, report.source), TRAINERS.get(report.target)
    h = "## " if markdown else ""
    lines = [
        f"{'# ' if markdown else ''}Migration report: {src} -> {dst}",
        "",
        f"Source: {report.source_path}",
        f"Output: {report.out_dir or '(not written)'}",
        "",
    ]
    lines += [
        f"{h}Settings ({src} -> {dst})",
        "",
        "Values are in recipe terms (repeats = times each image is seen per epoch); "
        "docs/migrate.md explains each row.",
        "",
    ]
    lines += [*_table(report.rows, src, dst, markdown), ""]
    lines += _section(
        f"{h}Changes of meaning",
        [f"[{d.code}] {d.message}" + (f" ({d.help})" if d.help else "") for d in report.changes],
        markdown,
    )
    lines += _section(f"{h}Losses", report.losses, markdown)
    lines += _section(
        f"{h}Fields that read back differently",
        [f"{p}: {a} -> {b}" for p, a, b in report.differences],
        markdown,
    )
    lines += _section(
        f"{h}Read from the source",
        [f"[{d.code}] {d.severity}: {d.message}" for d in report.imported],
        markdown,
    )
    verdict = f"{len(report.losses)} setting(s) lost" if report.lossy else "nothing lost"
    lines.append(f"Result: {verdict}, {len(report.changes)} change(s) of meaning.")
    return "\n".join(lines).rstrip() + "\n"


def _table(rows: list[Row], src: str, dst: str, markdown: bool) -> list[str]:
    header = ["recipe field", f"{src} setting", "was", f"{dst} setting", "becomes"]
    cells = [[r.field, r.source_key, r.source_value, r.target_key, r.target_value] for r in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return out + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    widths = [min(max(len(x) for x in col), 40) for col in zip(header, *cells, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*row).rstrip() for row in cells]


def _section(title: str, items: list[str], markdown: bool) -> list[str]:
    if not items:
        return [title, "", "None.", ""]
    bullet = "- " if markdown else "  - "
    return [title, "", *(bullet + item for item in items), ""]
