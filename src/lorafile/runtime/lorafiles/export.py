"""Trained peft adapters <-> LoRA files (kohya by default, or diffusers/peft).

`adapter_modules` reads the adapter straight off the peft layers of the models (however they
were attached: diffusers/transformers `add_adapter` or `inject_adapter_in_model`), so the alpha
written is the one the layer really applies: kohya alpha = peft scaling * r (this also covers
rsLoRA, whose scaling is alpha/sqrt(r)). `save_adapter` writes them through the one converter
(`convert.write_lora`) with kohya's `ss_*` training metadata and `modelspec.*` keys (sd-scripts
`train_network.py`, `library/sai_model_spec.py`), so A1111 and CivitAI show the settings.

`load_adapter` goes the other way: any supported file (kohya with original or diffusers block
names, diffusers/peft, SimpleTuner LyCORIS) is attached to the models as a peft adapter with
each module's rank and alpha, for training on or sampling with it.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorafile.compiler.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError
from lorafile.runtime.lorafiles.convert import (
    LOHA_KEYS,
    LOKR_KEYS,
    AdapterModule,
    LoraFile,
    adapter_config_beside,
    check_writable,
    parse_lora,
    read_safetensors,
    write_lora,
)
from lorafile.runtime.lorafiles.keys import COMPONENTS, KeyMap, canonical_path, model_path

MODELSPEC_ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"


def _models(models) -> dict[str, Any]:
    """Accept SDXLComponents or a mapping {"unet": ..., "text_encoder": ..., ...}."""
    if isinstance(models, Mapping):
        return {c: models.get(c) for c in COMPONENTS if models.get(c) is not None}
    return {c: getattr(models, c) for c in COMPONENTS if getattr(models, c, None) is not None}


def adapter_modules(models, adapter_name: str = "default") -> list[AdapterModule]:
    """The adapter named `adapter_name` on the models' peft layers, as AdapterModules."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = []
    for component, model in _models(models).items():
        for name, layer in model.named_modules():
            if not isinstance(layer, BaseTunerLayer) or adapter_name not in layer.scaling:
                continue
            module = _module_from_layer(layer, adapter_name)
            module.component, module.path = component, canonical_path(component, name)
            module.source = f"{component}.{name}"
            out.append(module)
    return out


def _module_from_layer(layer, adapter: str) -> AdapterModule:
    tensors: dict[str, Any] = {}
    if hasattr(layer, "lora_A") and adapter in layer.lora_A:
        down = layer.lora_A[adapter].weight.detach().clone()
        if layer.use_dora.get(adapter):
            mag = layer.lora_magnitude_vector[adapter].weight.detach()
            tensors["dora_scale"] = dora_scale_kohya(mag, down.dim())
        tensors["lora_down.weight"] = down
        tensors["lora_up.weight"] = layer.lora_B[adapter].weight.detach().clone()
        rank = layer.r[adapter]
    elif hasattr(layer, "hada_w1_a") and adapter in layer.hada_w1_a:
        for key in (*LOHA_KEYS, "hada_t1", "hada_t2"):
            params = getattr(layer, key)
            if adapter in params:
                tensors[key] = params[adapter].detach().clone()
        rank = layer.r[adapter]
    elif hasattr(layer, "lokr_w1") and adapter in layer.r:
        return _lokr_module(layer, adapter)
    else:
        raise DiagnosticError([Diagnostic(
            code="F711",
            message=f"The peft layer {type(layer).__name__} cannot be exported to a LoRA file.",
            help="lorafile exports LoRA, LoCon, LoHa and LoKr adapters (DoRA included).",
        )])  # fmt: skip
    alpha = float(layer.scaling[adapter]) * rank  # kohya: scale = alpha / rank
    return AdapterModule(None, "", "", tensors, alpha, "trained")


def dora_scale_kohya(magnitude, weight_dim: int):
    """peft's DoRA magnitude ((out,) for a Linear, (1, out, 1, 1) for a Conv2d) in the LyCORIS
    / kohya layout `(out, 1)` / `(out, 1, 1, 1)`: a norm per output channel (`wd_on_output`)."""
    out = magnitude.numel()
    return magnitude.reshape(out, *[1] * (weight_dim - 1)).clone()


def _lokr_module(layer, adapter: str) -> AdapterModule:
    """A peft LoKr layer in LyCORIS' spelling. Loaders apply alpha/rank only where a factor is
    a product (`_a @ _b`), else scale 1 (LyCORIS, ComfyUI `weight_adapter/lokr.py`): with both
    factors full, peft's scale is folded into `lokr_w1` so every loader applies the same delta."""
    tensors = {
        key: getattr(layer, key)[adapter].detach().clone()
        for key in LOKR_KEYS
        if adapter in getattr(layer, key)
    }
    rank, scale = layer.r[adapter], float(layer.scaling[adapter])
    if "lokr_w1" in tensors and "lokr_w2" in tensors:
        tensors["lokr_w1"] = tensors["lokr_w1"] * scale
        return AdapterModule(None, "", "", tensors, float(rank), "trained")
    return AdapterModule(None, "", "", tensors, scale * rank, "trained")


def training_metadata(facts: Mapping[str, Any] | None = None, modules=(), title: str = "") -> dict:
    """kohya-style metadata: the trainer's `ss_*`/`modelspec.*` facts plus what the adapter
    itself says (network dim/alpha/module, base model version, modelspec architecture)."""
    facts = dict(facts or {})
    ranks = Counter(m.rank for m in modules)
    alphas = Counter(m.alpha for m in modules)
    algos = {m.algo for m in modules}
    dora = any("dora_scale" in m.tensors for m in modules)
    out: dict[str, str] = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_v2": "False",
        "ss_network_module": "networks.lora" if algos <= {"lora"} and not dora else "lycoris.kohya",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": MODELSPEC_ARCHITECTURE,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.title": title or facts.get("ss_output_name", "") or "lorafile LoRA",
        "lorafile.writer": "lorafile",
    }
    if ranks:
        out["ss_network_dim"] = str(ranks.most_common(1)[0][0])
        out["ss_network_alpha"] = f"{alphas.most_common(1)[0][0]:g}"
    if algos - {"lora"} or dora:
        args = {"algo": sorted(algos - {"lora"})[0] if algos - {"lora"} else "locon"}
        out["ss_network_args"] = _text(args | ({"dora_wd": "True"} if dora else {}))
    out.update({k: v if isinstance(v, str) else _text(v) for k, v in facts.items()})
    return out


def _text(value: Any) -> str:
    import json

    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return str(value)


def save_adapter(models, path: str | os.PathLike, layout: str = "kohya",
                 metadata: Mapping[str, Any] | None = None, dtype=None,
                 adapter_name: str = "default", title: str = "") -> Path:  # fmt: skip
    """Write the trained adapter as `layout` ("kohya" with original SDXL block names,
    "kohya-diffusers", or "diffusers") at `path`, atomically. `metadata`: the trainer's facts
    (`ss_*`, `modelspec.*` or any string keys); `dtype`: torch dtype or fp16/bf16/fp32."""
    modules = adapter_modules(models, adapter_name)
    if not modules:
        raise DiagnosticError([Diagnostic(
            code="F711",
            message=f"The models carry no adapter named `{adapter_name}`; nothing to save.",
            help="Attach the adapter (peft add_adapter) before saving.",
        )])  # fmt: skip
    bag = DiagnosticBag(file=str(path))
    modules = check_writable(modules, layout, allow_lossy=False, bag=bag)
    bag.raise_if_errors()
    keymap = KeyMap.from_models(_models(models))
    facts = training_metadata(metadata, modules, title)
    return write_lora(modules, path, layout, facts, dtype, keymap)


def read_adapter(path: str | os.PathLike, models) -> LoraFile:
    """Read a LoRA file against these models' module names (tiny or full SDXL)."""
    tensors, metadata = read_safetensors(path)
    keymap = KeyMap.from_models(_models(models))
    return parse_lora(tensors, metadata, keymap, str(path), adapter_config_beside(path))


def load_adapter(path_or_file, models, adapter_name: str = "default") -> LoraFile:
    """Attach a LoRA/LoCon/LoHa file to the models as peft adapter `adapter_name`.

    Each module keeps its own rank and alpha (peft rank_pattern/alpha_pattern). Raises
    DiagnosticError naming modules that match no layer of these models.
    """
    lora = (
        path_or_file if isinstance(path_or_file, LoraFile) else read_adapter(path_or_file, models)
    )
    unknown = [m.source for m in lora.modules if m.component is None]
    if unknown:
        raise DiagnosticError([Diagnostic(
            code="F711",
            message=f"{len(unknown)} key(s) match no layer of this model, e.g. `{unknown[0]}`.",
            help="Check that the file is an SDXL LoRA (run `lorafile inspect` on it).",
        )])  # fmt: skip
    live = _models(models)
    for component in COMPONENTS:
        mods = [m for m in lora.modules if m.component == component]
        if mods:
            _attach(live[component], mods, adapter_name)
    return lora


def _peft_config(mods: list[AdapterModule], model):
    from peft import LoHaConfig, LoraConfig

    algos = {m.algo for m in mods}
    if len(algos) != 1 or not algos <= {"lora", "loha"}:
        raise DiagnosticError([Diagnostic(
            code="F711",
            message=f"Cannot attach adapters of kind {sorted(algos)} to the model.",
            help="lorafile attaches LoRA/LoCon (DoRA included) or LoHa files; "
            "apply LoKr files with LyCORIS (`lycoris.create_lycoris_from_weights`).",
        )])  # fmt: skip
    names = {model_path(model, m.path): m for m in mods}
    rank = Counter(m.rank for m in mods).most_common(1)[0][0]
    alpha = Counter(m.alpha if m.alpha is not None else m.rank for m in mods).most_common(1)[0][0]
    common = {
        "r": rank,
        "target_modules": sorted(names),
        "rank_pattern": {n: m.rank for n, m in names.items() if m.rank != rank},
    }
    alphas = {n: (m.alpha if m.alpha is not None else m.rank) for n, m in names.items()}
    pattern = {n: a for n, a in alphas.items() if a != alpha}
    if algos == {"lora"}:
        dora = any("dora_scale" in m.tensors for m in mods)
        return LoraConfig(lora_alpha=alpha, alpha_pattern=pattern, use_dora=dora, **common)
    return LoHaConfig(alpha=alpha, alpha_pattern=pattern, **common)


def _attach(model, mods: list[AdapterModule], adapter_name: str) -> None:
    import torch
    from peft import inject_adapter_in_model

    config = _peft_config(mods, model)
    if _is_diffusers(model):
        model.add_adapter(config, adapter_name=adapter_name)  # registers it for set_adapters
    else:
        # transformers 5's add_adapter demands peft >= 0.22; peft's injector works on any module.
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    with torch.no_grad():
        for m in mods:
            layer = model.get_submodule(model_path(model, m.path))
            for key, value in m.tensors.items():
                param = _param(layer, key, adapter_name)
                param.copy_(value.reshape(param.shape))  # dora_scale: kohya vs peft shape


def _is_diffusers(model) -> bool:
    return type(model).__module__.startswith("diffusers.")


def _param(layer, key: str, adapter: str):
    if key == "lora_down.weight":
        return layer.lora_A[adapter].weight
    if key == "lora_up.weight":
        return layer.lora_B[adapter].weight
    if key == "dora_scale":
        return layer.lora_magnitude_vector[adapter].weight
    return getattr(layer, key)[adapter]
