"""What is in a LoRA file, in plain words: `lorafile inspect`.

Reads the file with the converter's reader (`convert.read_lora`), so inspect and convert agree
on layout, algorithm, rank and alpha. The report is a plain dict (the `--format json` output);
`render_text` prints it for people.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

from lorafile.runtime.lorafiles.convert import (
    DIFFUSERS_METADATA_KEY,
    LAYOUTS,
    AdapterModule,
    damage_of,
    read_lora,
)

# Metadata keys read back in words (sd-scripts train_network.py, library/sai_model_spec.py).
METADATA_WORDS = {
    "ss_output_name": "output name",
    "ss_base_model_version": "base model version",
    "ss_sd_model_name": "base model file",
    "ss_new_sd_model_hash": "base model sha256",
    "ss_vae_name": "VAE file",
    "ss_network_module": "network module",
    "ss_network_dim": "network rank",
    "ss_network_alpha": "network alpha",
    "ss_network_args": "network arguments",
    "ss_network_dropout": "network dropout",
    "ss_learning_rate": "learning rate",
    "ss_unet_lr": "UNet learning rate",
    "ss_text_encoder_lr": "text encoder learning rate",
    "ss_lr_scheduler": "learning-rate schedule",
    "ss_lr_warmup_steps": "warmup steps",
    "ss_optimizer": "optimizer",
    "ss_max_train_steps": "planned training steps",
    "ss_steps": "steps trained",
    "ss_epoch": "epochs trained",
    "ss_num_epochs": "planned epochs",
    "ss_num_train_images": "training images (with repeats)",
    "ss_num_reg_images": "regularization images",
    "ss_batch_size_per_device": "batch size per device",
    "ss_total_batch_size": "total batch size",
    "ss_gradient_accumulation_steps": "gradient accumulation steps",
    "ss_mixed_precision": "mixed precision",
    "ss_gradient_checkpointing": "gradient checkpointing",
    "ss_resolution": "training resolution",
    "ss_seed": "seed",
    "ss_noise_offset": "noise offset",
    "ss_min_snr_gamma": "min-SNR gamma",
    "ss_clip_skip": "CLIP skip",
    "ss_prior_loss_weight": "prior loss weight",
    "ss_caption_dropout_rate": "caption dropout rate",
    "ss_training_started_at": "training started",
    "ss_training_finished_at": "training finished",
    "ss_training_comment": "comment",
    "ss_v2": "SD 2.x model",
    "ss_tag_frequency": "caption tags",
    "ss_dataset_dirs": "dataset folders",
    "ss_bucket_info": "aspect-ratio buckets",
    "ss_datasets": "datasets",
    "lorafile.writer": "written by",
    "lorafile.layout": "layout written",
    "lorafile.ema_decay": "EMA decay (this file is the moving average of the weights)",
    "lorafile.ema_updates": "EMA updates averaged",
    "format": "tensor framework",
    "modelspec.sai_model_spec": "ModelSpec version",
    "modelspec.implementation": "implementation",
    "modelspec.title": "title",
    "modelspec.architecture": "architecture",
    "modelspec.author": "author",
    "modelspec.description": "description",
    "modelspec.date": "date",
    "modelspec.resolution": "resolution",
    "modelspec.prediction_type": "prediction type",
    "modelspec.license": "license",
    "modelspec.tags": "tags",
    "modelspec.trigger_phrase": "trigger phrase",
}
_TIMESTAMPS = {"ss_training_started_at", "ss_training_finished_at"}
_SUMMARISED = {"ss_tag_frequency", "ss_dataset_dirs", "ss_bucket_info", "ss_datasets"}


def _region(m: AdapterModule) -> str:
    if m.component != "unet":
        return m.component or "unmatched"
    for prefix, name in (("down_blocks", "down"), ("mid_block", "mid"), ("up_blocks", "up")):
        if m.path.startswith(prefix):
            return name
    return "other"


def _counts(values) -> dict[str, int]:
    counter = Counter(values)
    return {_num(k): v for k, v in sorted(counter.items(), key=lambda kv: str(kv[0]))}


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def coverage(modules: list[AdapterModule]) -> dict[str, Any]:
    """Module counts per UNet region (down/mid/up), per layer kind, per text encoder."""
    from lorafile.runtime.lorafiles.keys import category

    unet = [m for m in modules if m.component == "unet"]
    return {
        "unet": {
            "total": len(unet),
            "regions": dict(Counter(_region(m) for m in unet)),
            "kinds": dict(Counter(category("unet", m.path) or "other" for m in unet)),
        },
        "text_encoder": sum(m.component == "text_encoder" for m in modules),
        "text_encoder_2": sum(m.component == "text_encoder_2" for m in modules),
    }


def problems(modules: list[AdapterModule]) -> list[str]:
    """Everything that makes the file load wrongly, partly, or not at all."""
    import torch

    out = []
    unmatched = [m.source for m in modules if m.component is None]
    if unmatched:
        out.append(f"{len(unmatched)} key(s) match no SDXL module (loaders skip or reject them), "
                   f"e.g. `{unmatched[0]}`.")  # fmt: skip
    damaged = [(m.source, why) for m in modules if (why := damage_of(m))]
    if damaged:
        out.append(f"{len(damaged)} module(s) are damaged, so loaders fail on them, e.g. "
                   f"`{damaged[0][0]}` ({damaged[0][1]}).")  # fmt: skip
    matched = [m for m in modules if m.component is not None]
    no_alpha = [m.source for m in matched if m.alpha is None and m.rank is not None]
    if no_alpha:
        out.append(f"{len(no_alpha)} module(s) have no alpha; loaders assume alpha = rank "
                   f"(scale 1), e.g. `{no_alpha[0]}`.")  # fmt: skip
    meta_only = [
        m.source
        for m in matched
        if m.alpha_source == "metadata" and m.source.startswith(("lora_", "lycoris_"))
    ]
    if meta_only:
        out.append(f"{len(meta_only)} kohya-named module(s) have alpha only in the metadata; kohya, "
                   f"ComfyUI and A1111 read `.alpha` tensors and will use scale 1 "
                   f"(`lorafile convert --to kohya` writes them), e.g. `{meta_only[0]}`.")  # fmt: skip
    for kind, mods in (("linear", [m for m in matched if not m.is_conv]),
                       ("3x3 conv", [m for m in matched if m.is_conv])):  # fmt: skip
        ranks = Counter(m.rank for m in mods if m.rank is not None)
        if len(ranks) > 1:
            spread = ", ".join(f"rank {r} in {_modules(n)}" for r, n in sorted(ranks.items()))
            out.append(f"Mixed ranks among {kind} modules: {spread}.")
    for label, test in (("NaN or inf values", lambda t: not torch.isfinite(t).all()),
                        ("an all-zero tensor (no effect)", lambda t: not t.any())):  # fmt: skip
        bad = [m.source for m in modules if any(
            t.is_floating_point() and test(t) for t in m.tensors.values())]  # fmt: skip
        if bad:
            out.append(f"{len(bad)} module(s) contain {label}, e.g. `{bad[0]}`.")
    return out


def describe_metadata(metadata: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, words, value) for each metadata entry, values made readable."""
    out = []
    for key in sorted(metadata):
        value = metadata[key]
        if key in _TIMESTAMPS:
            value = _timestamp(value)
        elif key in _SUMMARISED:
            value = _summarise_json(key, value)
        elif key == DIFFUSERS_METADATA_KEY:
            value = _summarise_adapter_config(value)
        elif len(value) > 80:
            value = value[:77] + "..."
        words = METADATA_WORDS.get(
            key, "diffusers adapter config" if key == DIFFUSERS_METADATA_KEY else ""
        )
        out.append((key, words, value))
    return out


def _timestamp(value: str) -> str:
    try:
        return _dt.datetime.fromtimestamp(float(value), _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return value


def _summarise_json(key: str, value: str) -> str:
    try:
        data = json.loads(value)
    except ValueError:
        return value[:77] + "..." if len(value) > 80 else value
    if key == "ss_tag_frequency" and isinstance(data, dict):
        tags = Counter()
        for per_dir in data.values():
            tags.update(per_dir if isinstance(per_dir, dict) else {})
        top = ", ".join(f"{t} ({n})" for t, n in tags.most_common(5))
        return f"{len(tags)} distinct tags; most frequent: {top}"
    if key == "ss_dataset_dirs" and isinstance(data, dict):
        parts = [f"{d}: {v.get('img_count', '?')} images x {v.get('n_repeats', '?')} repeats"
                 for d, v in data.items() if isinstance(v, dict)]  # fmt: skip
        return "; ".join(parts)
    return f"{type(data).__name__} with {len(data)} entries"


def _summarise_adapter_config(value: str) -> str:
    try:
        data = json.loads(value)
    except ValueError:
        return "unreadable JSON"
    parts = []
    for component in ("unet", "text_encoder", "text_encoder_2"):
        rank = data.get(f"{component}.r")
        alpha = data.get(f"{component}.lora_alpha", data.get(f"{component}.alpha"))
        if rank is not None:
            extra = " rsLoRA" if data.get(f"{component}.use_rslora") else ""
            pattern = len(data.get(f"{component}.alpha_pattern") or {})
            more = f", {pattern} per-module alphas" if pattern else ""
            parts.append(f"{component} r={rank} alpha={_num(alpha)}{extra}{more}")
    return "; ".join(parts) or "no per-component settings"


def _writer(metadata: dict[str, str]) -> str:
    if metadata.get("lorafile.writer") or metadata.get("lorafile.layout"):
        return "lorafile"
    if any(k.startswith("ss_") for k in metadata):
        module = metadata.get("ss_network_module", "")
        return "kohya sd-scripts" + (" with LyCORIS" if "lycoris" in module else "")
    if DIFFUSERS_METADATA_KEY in metadata:
        return "diffusers/peft (save_lora_weights)"
    return "unknown"


def inspect_file(path) -> dict[str, Any]:
    """The report of `lorafile inspect` as a JSON-ready dict."""
    lora = read_lora(path)
    mods = lora.modules
    ranked = [m for m in mods if m.rank is not None]
    return {
        "file": Path(path).name,
        "layout": lora.layout,
        "layout_description": LAYOUTS[lora.layout],
        "writer": _writer(lora.metadata),
        "modules": len(mods),
        "parameters": sum(t.numel() for m in mods for t in m.tensors.values()),
        "dtypes": _counts(
            str(t.dtype).removeprefix("torch.") for m in mods for t in m.tensors.values()
        ),
        "algorithms": _counts(m.display_algo if m.component else "unmatched" for m in mods),
        "ranks": _counts(m.rank for m in ranked),
        "alphas": _counts(m.alpha if m.alpha is not None else "missing" for m in ranked),
        "alpha_sources": _counts(m.alpha_source for m in ranked),
        "scales": _counts(round(m.scale, 6) for m in ranked),
        "coverage": coverage(mods),
        "metadata": [
            {"key": k, "meaning": w, "value": v} for k, w, v in describe_metadata(lora.metadata)
        ],
        "problems": problems(mods),
        "per_module": [_module_entry(m) for m in mods],
    }


def _module_entry(m: AdapterModule) -> dict[str, Any]:
    """One module of the JSON report (text output prints only the totals)."""
    return {
        "key": m.source,
        "component": m.component,
        "path": m.path if m.component else None,
        "algorithm": m.display_algo if m.component else "unmatched",
        "rank": m.rank,
        "alpha": m.alpha,
        "scale": m.scale,
    }


def _modules(count: int) -> str:
    return f"{count} module" + ("" if count == 1 else "s")


def _line(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "none"


def render_text(report: dict[str, Any]) -> str:
    """The report for people."""
    cov = report["coverage"]
    unet = cov["unet"]
    lines = [
        f"{report['file']}",
        f"  layout      {report['layout_description']}",
        f"  written by  {report['writer']}",
        f"  modules     {report['modules']} ({report['parameters']:,} parameters)",
        f"  dtype       {_line(report['dtypes'])}",
        f"  algorithms  {_line(report['algorithms'])}",
        f"  ranks       {_line(report['ranks'])}",
        f"  alphas      {_line(report['alphas'])}  [from {_line(report['alpha_sources'])}]",
        f"  scale       {_line(report['scales'])}  (alpha / rank; applied at strength 1)",
        "coverage",
        f"  UNet        {_modules(unet['total'])}: {_line(unet['regions'])}; {_line(unet['kinds'])}",
        f"  text enc 1  {_modules(cov['text_encoder'])}",
        f"  text enc 2  {_modules(cov['text_encoder_2'])}",
        "metadata" + ("" if report["metadata"] else "  (none)"),
    ]
    for item in report["metadata"]:
        words = f" ({item['meaning']})" if item["meaning"] else ""
        lines.append(f"  {item['key']}{words}: {item['value']}")
    lines.append("problems" + ("" if report["problems"] else "  none found"))
    lines += [f"  - {p}" for p in report["problems"]]
    return "\n".join(lines) + "\n"
