"""The one LoRA file converter: read any SDXL LoRA layout, write kohya or diffusers/peft.

Reading turns a file into `AdapterModule`s: one per adapted layer, named by component and
canonical diffusers path, holding its tensors under kohya/LyCORIS suffixes (`lora_down.weight`,
`lora_up.weight`, `hada_w1_a`, ...) and its alpha in kohya's convention, scale = alpha / rank
(sd-scripts `networks/lora.py`; LyCORIS `modules/*.py` the same). Writing spells those modules
in a target layout. `export.py` (trained peft adapters) and `lorafile convert` both go through
`write_lora`, so there is one converter.

Why not diffusers' converters: `convert_state_dict_to_kohya` writes alpha = rank whatever the
training alpha was, names conv and feed-forward keys wrongly for sd-scripts, and transformers 5
dropped `text_model.` from CLIP-L module names, which ComfyUI and kohya expect
(`lora_te1_text_model_...`; ComfyUI `comfy/lora.py::model_lora_keys_clip`).

Alpha sources, in order: `.alpha` tensors (kohya, LyCORIS); diffusers' `lora_adapter_metadata`
(peft LoraConfig kwargs per component: lora_alpha, alpha_pattern, use_rslora); a peft
`adapter_config.json` beside the file; top-level `lora_alpha`/`ss_network_alpha` metadata;
else none (loaders then assume alpha = rank, scale 1).

Diagnostic codes: F710 unreadable/pickle LoRA file, F711 module the target cannot hold,
F712 alpha missing, F713 would overwrite the input.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafile.compiler.diagnostics import DiagnosticBag, fail
from lorafile.files import exists, is_dir, is_file, real_path
from lorafile.runtime.lorafiles.keys import COMPONENTS, KeyMap, peft_name, sdxl_keymap

# Parameter suffixes, longest first so `lokr_w1_a` wins over `lokr_w1`.
KOHYA_SUFFIXES = (
    "lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale", "scalar",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_w1", "lokr_w2", "lokr_t2",
    "diff_b", "diff", "oft_blocks", "oft_diag",
)  # fmt: skip
# peft spelling -> kohya spelling (peft LoHa/LoKr already use LyCORIS's names).
# Older diffusers files (0.21-0.24, before peft) used `lora.down/up` and `lora_linear_layer`.
PEFT_TO_KOHYA = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector.weight": "dora_scale",
    "lora_magnitude_vector": "dora_scale",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight",
    "lora_linear_layer.up.weight": "lora_up.weight",
}
KOHYA_TO_PEFT = {
    "lora_down.weight": "lora_A.weight",
    "lora_up.weight": "lora_B.weight",
    "dora_scale": "lora_magnitude_vector.weight",
}
# diffusers' attention-processor format (2023): `attn1.processor.to_q_lora.down.weight`.
_PROCESSOR = re.compile(r"(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
# LyCORIS/peft LoKr: each factor full (`lokr_w1`) or a product (`lokr_w1_a @ lokr_w1_b`);
# `lokr_t2` is the Tucker core of an "effective conv" w2 (ComfyUI `weight_adapter/lokr.py`).
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers loaders/lora_base.py
LAYOUTS = {
    "kohya": "kohya, original SDXL block names (sd-scripts, ComfyUI, A1111)",
    "kohya-diffusers": "kohya, diffusers block names (diffusers/LyCORIS export)",
    "diffusers": "diffusers/peft (unet./text_encoder. keys, alpha in metadata)",
    "lycoris": "SimpleTuner LyCORIS (lycoris_ prefix, diffusers block names)",
    "unknown": "not a known SDXL LoRA layout",
}


@dataclass
class AdapterModule:
    """One adapted layer. `component` is None when the name matches no SDXL module."""

    component: str | None
    path: str
    source: str
    tensors: dict[str, Any] = field(default_factory=dict)
    alpha: float | None = None
    alpha_source: str = "none"
    kind: str | None = None
    """The layer's kind in the key map (linear, conv1x1, conv3x3) when the file was read."""
    damage: str = ""
    """Why the file's tensors for this module are not one adapter ('' when they are); set
    when the file was read (an alpha that is not one number), see `damage_of`."""

    @property
    def algo(self) -> str:
        names = set(self.tensors)
        if "lora_down.weight" in names:
            return "lora"
        for prefix, algo in (
            ("hada_", "loha"),
            ("lokr_", "lokr"),
            ("diff", "full"),
            ("oft_", "oft"),
        ):
            if any(n.startswith(prefix) for n in names):
                return algo
        return "unknown"

    @property
    def is_conv(self) -> bool:
        if self.kind is not None:  # a LoKr factor's shape does not say it
            return self.kind == "conv3x3"
        first = self.tensors.get("lora_down.weight", self.tensors.get("hada_w1_b"))
        return first is not None and first.dim() == 4 and tuple(first.shape[-2:]) != (1, 1)

    @property
    def display_algo(self) -> str:
        """LoRA, LoCon (a LoRA on a 3x3 conv), LoHa, LoKr, ..."""
        names = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "full": "full", "oft": "OFT"}
        if self.algo == "lora" and self.is_conv:
            return "LoCon"
        return names.get(self.algo, "unknown")

    @property
    def rank(self) -> int | None:
        t = self.tensors
        if "lora_down.weight" in t:
            return int(t["lora_down.weight"].shape[0])
        if "hada_w1_b" in t:
            return int(t["hada_w1_b"].shape[0])
        for key in ("lokr_w2_b", "lokr_w1_b"):  # the rank loaders divide alpha by
            if key in t:
                return int(t[key].shape[0])
        return None

    @property
    def scale(self) -> float | None:
        """alpha / rank: the multiplier on up @ down (1.0 where alpha is unknown, as loaders do).
        A LoKr with both factors full has scale 1 (LyCORIS and ComfyUI ignore its alpha)."""
        if self.rank is None:
            return 1.0 if self.algo == "lokr" else None
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


@dataclass
class LoraFile:
    modules: list[AdapterModule]
    metadata: dict[str, str]
    layout: str
    path: str = ""
    written: int = 0  # modules written by convert_file (fewer than modules with --allow-lossy)

    @property
    def matched(self) -> list[AdapterModule]:
        return [m for m in self.modules if m.component is not None]


# --- reading --------------------------------------------------------------------------------


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """Tensors and metadata of a LoRA file; refuses pickle files and unreadable ones (F710)."""
    return _read(path, tensors=True)


def read_metadata(path: str | os.PathLike) -> dict:
    """A LoRA file's metadata alone (no tensor is loaded), with `read_safetensors`' checks."""
    return _read(path, tensors=False)[1]


def _read(path: str | os.PathLike, tensors: bool) -> tuple[dict, dict]:
    p = Path(path)
    if not is_file(p):
        raise fail("F710", _not_a_file(p), "Give the path of a LoRA .safetensors file.")
    if p.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise fail(
            "F710",
            f"`{p.name}` is a pickle file; reading it would run any code it contains.",
            "Ask for a .safetensors version, or convert it in a sandbox you trust.",
        )
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise fail(
            "F710",
            f"`{p.name}` is not a readable safetensors file ({err}).",
            "Check that the download finished; a truncated file cannot be read.",
        ) from err
    return loaded, metadata


def _not_a_file(p: Path) -> str:
    if is_dir(p):
        return f"`{p}` is a folder, not a LoRA file."
    if exists(p):  # /dev/zero, a FIFO: reading would never end or never start
        return f"`{p}` is not a regular file (a device, pipe or socket), so it is not read."
    return f"The LoRA file `{p}` does not exist."


def split_key(key: str) -> tuple[str, str] | None:
    """`lora_unet_x.lora_down.weight` -> (`lora_unet_x`, `lora_down.weight`); peft suffixes are
    translated to kohya's; None for a key with no adapter suffix."""
    key = key.removeprefix("base_model.model.")
    m = _PROCESSOR.match(key)
    if m:
        layer = "to_out.0" if m[2] == "to_out" else m[2]
        return f"{m[1]}.{layer}", f"lora_{m[3]}.weight"
    for peft, kohya in PEFT_TO_KOHYA.items():
        if key.endswith("." + peft):
            return key[: -len(peft) - 1], kohya
    m = re.match(r"(.*)\.lora_([AB])\.[^.]+\.weight$", key)  # unstripped adapter names
    if m:
        return m[1], "lora_down.weight" if m[2] == "A" else "lora_up.weight"
    for suffix in KOHYA_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def detect_layout(names: list[str], keymap: KeyMap) -> str:
    """Which layout a set of module names uses (see LAYOUTS)."""
    if any(n.startswith("lycoris_") for n in names):
        return "lycoris"
    peft_names = (*(f"{c}." for c in COMPONENTS), "down_blocks.", "mid_block.", "up_blocks.")
    if any(n.startswith(peft_names) for n in names):
        return "diffusers"
    unet = [n for n in names if n.startswith("lora_unet_")]
    if unet and all(re.match(r"lora_unet_(down_blocks|mid_block|up_blocks)_", n) for n in unet):
        return "kohya-diffusers"
    if any(n.startswith(("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_")) for n in names):
        return "kohya"
    return "unknown"


def read_lora(path: str | os.PathLike, keymap: KeyMap | None = None) -> LoraFile:
    """Read a LoRA `.safetensors` of any supported layout into AdapterModules."""
    tensors, metadata = read_safetensors(path)
    return parse_lora(tensors, metadata, keymap, str(path), adapter_config_beside(path))


def parse_lora(tensors: dict, metadata: dict, keymap: KeyMap | None = None, path: str = "",
               adapter_config: dict | None = None) -> LoraFile:  # fmt: skip
    """Group tensors into modules and find each module's alpha."""
    keymap = keymap or sdxl_keymap()
    grouped: dict[str, dict[str, Any]] = {}
    stray: list[str] = []
    for key, value in tensors.items():
        parts = split_key(key)
        if parts is None:
            stray.append(key)
            continue
        grouped.setdefault(parts[0], {})[parts[1]] = value
    modules = []
    for name, params in grouped.items():
        # A bare peft UNet file (`base_model.model.` stripped) names modules without `unet.`.
        found = keymap.resolve(name) or keymap.resolve(f"unet.{name}")
        component, mpath = found if found else (None, name)
        down = params.get("lora_down.weight")
        if "dora_scale" in params and down is not None:  # peft's magnitude shapes differ
            params["dora_scale"] = params["dora_scale"].reshape(-1, *[1] * (down.dim() - 1))
        module = AdapterModule(component, mpath, name, params)
        if found:
            module.kind = keymap.modules[found].kind
        alpha = params.pop("alpha", None)
        if alpha is not None and alpha.numel() != 1:
            module.damage = f"its alpha holds {alpha.numel()} values, not one number"
        elif alpha is not None:
            module.alpha, module.alpha_source = float(alpha), "tensor"
        modules.append(module)
    modules += [AdapterModule(None, key, key, {key: tensors[key]}) for key in stray]
    layout = detect_layout(list(grouped), keymap)
    # An adapter_config.json beside the file describes a peft file only.
    _alphas_from_metadata(modules, metadata, adapter_config if layout == "diffusers" else None)
    return LoraFile(modules, metadata, layout, path)


def adapter_config_beside(path) -> dict | None:
    config = Path(path).with_name("adapter_config.json")
    if config.is_file():
        try:
            return json.loads(config.read_text())
        except (OSError, ValueError):
            return None
    return None


def _pattern_value(patterns: dict, path: str, default):
    """peft's rank_pattern/alpha_pattern lookup: the key matches the end of the module path."""
    for key, value in (patterns or {}).items():
        try:
            if any(re.match(rf"(.*\.)?({key})$", p) for p in (path, _short(path))):
                return value
        except re.error:
            continue  # not a pattern peft could have used either
    return default


def _short(path: str) -> str:
    return path.removeprefix("text_model.")


def _component_configs(metadata: dict, adapter_config: dict | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if raw:
        try:
            packed = json.loads(raw)
        except ValueError:
            packed = {}
        for key, value in packed.items():
            component, _, name = key.partition(".")
            out.setdefault(component, {})[name] = value
    if adapter_config:
        for component in COMPONENTS:
            out.setdefault(component, adapter_config)
    flat = {k: metadata[k] for k in ("lora_alpha", "alpha", "ss_network_alpha") if k in metadata}
    if flat:
        value = _float(next(iter(flat.values())))
        conv = _float(_network_args(metadata).get("conv_alpha"))
        for component in COMPONENTS:
            out.setdefault(component, {"lora_alpha": value, "conv_alpha": conv})
    return out


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _network_args(metadata: dict) -> dict:
    """sd-scripts' `ss_network_args` (JSON of the string kwargs: conv_dim, conv_alpha, algo)."""
    try:
        args = json.loads(metadata.get("ss_network_args", "{}"))
    except ValueError:
        return {}
    return args if isinstance(args, dict) else {}


def _alphas_from_metadata(modules: list[AdapterModule], metadata: dict, adapter_config) -> None:
    configs = _component_configs(metadata, adapter_config)
    for m in modules:
        if m.alpha is not None or m.component is None or m.rank is None:
            continue
        cfg = configs.get(m.component)
        if not cfg:
            continue
        base = cfg.get("lora_alpha", cfg.get("alpha"))
        if m.is_conv and cfg.get("conv_alpha") is not None:
            base = cfg["conv_alpha"]  # kohya's conv_alpha for the 3x3 convs
        alpha = _pattern_value(cfg.get("alpha_pattern"), m.path, base)
        if alpha is None:
            continue
        alpha = float(alpha)
        if cfg.get("use_rslora"):
            alpha *= math.sqrt(m.rank)  # peft scale alpha/sqrt(r) == kohya (alpha*sqrt(r))/r
        m.alpha, m.alpha_source = alpha, "metadata"


# --- writing --------------------------------------------------------------------------------


def check_writable(modules: list[AdapterModule], to: str, allow_lossy: bool, bag: DiagnosticBag):
    """The modules the target layout can hold; errors (F711) name the others unless lossy."""
    keep, dropped = [], []
    for m in modules:
        reason = _cannot_write(m, to)
        (dropped if reason else keep).append((m, reason))
    if dropped:
        names = ", ".join(f"`{m.source}` ({why})" for m, why in dropped[:8])
        more = f" and {len(dropped) - 8} more" if len(dropped) > 8 else ""
        message = f"{len(dropped)} module(s) cannot be written as {to}: {names}{more}."
        help = "Pass --allow-lossy to drop them, or keep the file in its original layout."
        (bag.warning if allow_lossy else bag.error)("F711", message, help)
    return [m for m, _ in keep]


WRITABLE = {
    "lora": {"lora_down.weight", "lora_up.weight", "dora_scale"},
    "loha": set(LOHA_KEYS),
    "lokr": set(LOKR_KEYS) - {"lokr_t2"},
}


def damage_of(m: AdapterModule) -> str:
    """Why a LoRA or LoHa module's factors cannot make one weight change ('' when they can):
    a factor missing, or shapes that disagree (a damaged or hand-edited file). Loaders would
    fail on it with a shape error, and merge or resize would compute nothing meaningful."""
    if m.damage:
        return m.damage
    t = m.tensors
    if m.algo == "lora" and "lora_mid.weight" not in t:
        return _lora_damage(t)
    if m.algo == "loha" and "hada_t1" not in t:
        return _loha_damage(t)
    return ""


def _lora_damage(t: dict) -> str:
    down, up = t["lora_down.weight"], t.get("lora_up.weight")
    if up is None:
        return "lora_down has no lora_up beside it"
    if down.dim() not in (2, 4) or up.dim() != down.dim():
        return f"lora_down has shape {list(down.shape)} and lora_up {list(up.shape)}"
    if up.shape[1] != down.shape[0]:
        return f"lora_down has rank {down.shape[0]} but lora_up rank {up.shape[1]}"
    return ""


def _loha_damage(t: dict) -> str:
    missing = [k for k in LOHA_KEYS if k not in t]
    if missing:
        return f"LoHa factor {', '.join(missing)} missing"
    w1a, w1b, w2a, w2b = (t[k] for k in LOHA_KEYS)
    if w1a.dim() != 2 or w2a.dim() != 2 or w1a.shape[1] != w1b.shape[0] or (
        w2a.shape[1] != w2b.shape[0] or w1a.shape[0] != w2a.shape[0]
    ) or w1b[0].numel() != w2b[0].numel():  # fmt: skip
        shapes = ", ".join(f"{k} {list(t[k].shape)}" for k in LOHA_KEYS)
        return f"LoHa factors whose shapes disagree ({shapes})"
    return ""


def _cannot_write(m: AdapterModule, to: str) -> str:
    if m.component is None:
        return "matches no SDXL module"
    if damage_of(m):
        return f"damaged: {damage_of(m)}"
    if m.algo not in WRITABLE:
        return f"{m.display_algo} is not supported by the converter"
    if m.algo == "lokr" and to == "diffusers":
        return "LoKr has no diffusers layout for SDXL (diffusers cannot load it); keep kohya"
    if "lora_mid.weight" in m.tensors or "hada_t1" in m.tensors or "lokr_t2" in m.tensors:
        return "Tucker factors have no equivalent in the target"
    allowed = WRITABLE[m.algo]
    extra = sorted(set(m.tensors) - allowed)
    if extra:
        return f"extra tensors {', '.join(extra)} next to the {m.display_algo} weights"
    return ""


def fill_alphas(modules, alpha: float | None, bag: DiagnosticBag) -> None:
    """Give every module an explicit alpha (an explicit --alpha, else rank: what loaders assume)."""
    missing = [m for m in modules if m.alpha is None and m.rank is not None]
    if not missing:
        return
    for m in missing:
        m.alpha = float(alpha) if alpha is not None else float(m.rank)
        m.alpha_source = "option" if alpha is not None else "assumed"
    what = f"alpha {alpha:g} from --alpha" if alpha is not None else "alpha = rank (scale 1)"
    bag.warning(
        "F712",
        f"{len(missing)} module(s) carry no alpha (for example `{missing[0].source}`); "
        f"writing {what}.",
        "If the adapter was trained with another alpha, pass --alpha with the training value.",
    )


def to_state_dict(modules: list[AdapterModule], to: str, keymap: KeyMap, dtype=None) -> dict:
    """Tensors of the modules spelled in layout `to` ("kohya", "kohya-diffusers", "diffusers")."""
    import torch

    out = {}
    for m in modules:
        if to == "diffusers":
            prefix = peft_name(m.component, m.path)
            names = {k: KOHYA_TO_PEFT.get(k, k) for k in m.tensors}
        else:
            prefix = keymap.kohya(m.component, m.path, sgm=(to == "kohya"))
            names = {k: k for k in m.tensors}
            if m.alpha is not None:
                out[f"{prefix}.alpha"] = torch.tensor(float(m.alpha), dtype=torch.float32)
        for key, value in m.tensors.items():
            if to == "diffusers" and key == "dora_scale":
                value = dora_scale_peft(value, m.tensors["lora_down.weight"].dim())
            value = value.to(dtype) if dtype is not None and value.is_floating_point() else value
            out[f"{prefix}.{names[key]}"] = value.contiguous()
    return out


def dora_scale_peft(scale, weight_dim: int):
    """A kohya/LyCORIS `dora_scale` ((out, 1) or (out, 1, 1, 1)) as peft's magnitude vector
    ((out,) for a Linear, (1, out, 1, 1) for a Conv2d)."""
    return scale.reshape(-1) if weight_dim == 2 else scale.reshape(1, -1, 1, 1)


def diffusers_adapter_metadata(modules: list[AdapterModule]) -> dict[str, Any]:
    """peft config kwargs per component, packed as diffusers does (`unet.r`, `unet.lora_alpha`,
    ...): the most common rank/alpha, with rank_pattern/alpha_pattern for the others."""
    out: dict[str, Any] = {}
    for component in COMPONENTS:
        mods = [m for m in modules if m.component == component]
        if not mods:
            continue
        rank = Counter(m.rank for m in mods).most_common(1)[0][0]
        alpha = Counter(m.alpha for m in mods).most_common(1)[0][0]
        name = (lambda p: _short(p)) if component != "unet" else (lambda p: p)
        algo = mods[0].algo
        config = {
            "r": rank,
            "lora_alpha" if algo == "lora" else "alpha": alpha,
            "target_modules": sorted(name(m.path) for m in mods),
            "rank_pattern": {name(m.path): m.rank for m in mods if m.rank != rank},
            "alpha_pattern": {name(m.path): m.alpha for m in mods if m.alpha != alpha},
        }
        if algo == "lora":
            dora = any("dora_scale" in m.tensors for m in mods)
            config.update(use_rslora=False, use_dora=dora, lora_dropout=0.0, bias="none")
        else:
            config["peft_type"] = "LOHA"
        out.update({f"{component}.{k}": v for k, v in config.items()})
    return out


def build_metadata(modules, to: str, metadata: dict) -> dict[str, str]:
    """Keep the input's metadata, translating the alpha carrier for the target layout."""
    # sshs_* hashes cover the tensors: stale after any conversion, recomputed in write_lora.
    out = {
        k: str(v)
        for k, v in metadata.items()
        if k != DIFFUSERS_METADATA_KEY and not k.startswith("sshs_")
    }
    out.setdefault("format", "pt")
    if to == "diffusers":
        packed = diffusers_adapter_metadata(modules)
        out[DIFFUSERS_METADATA_KEY] = json.dumps(packed, indent=2, sort_keys=True)
    ranks = Counter(m.rank for m in modules)
    alphas = Counter(m.alpha for m in modules)
    if ranks:
        out.setdefault("ss_network_dim", str(ranks.most_common(1)[0][0]))
        out.setdefault("ss_network_alpha", f"{alphas.most_common(1)[0][0]:g}")
    out.setdefault("ss_base_model_version", "sdxl_base_v1-0")
    out.setdefault("modelspec.sai_model_spec", "1.0.1")
    out.setdefault("modelspec.architecture", "stable-diffusion-xl-v1-base/lora")
    out["lorafile.layout"] = to
    return out


def write_lora(modules, path, to: str = "kohya", metadata: dict | None = None, dtype=None,
               keymap: KeyMap | None = None) -> Path:  # fmt: skip
    """Write modules (all with alpha set) as one safetensors file, atomically (temp + rename)."""
    from safetensors.torch import save

    from lorafile.files import atomic_path

    keymap = keymap or sdxl_keymap()
    tensors = to_state_dict(modules, to, keymap, parse_dtype(dtype))
    out = Path(path)
    meta = build_metadata(modules, to, metadata or {})
    if to != "diffusers":
        meta.update(addnet_hashes(tensors, meta))
    data = save(tensors, metadata=meta)
    with atomic_path(out) as tmp:
        # Serialised in memory, written by Python: a full disk or a read-only folder is then an
        # OSError with its errno (safetensors' own writer reports an opaque SafetensorError).
        tmp.write_bytes(data)
    return out


def addnet_hashes(tensors: dict, metadata: dict[str, str]) -> dict[str, str]:
    """`sshs_model_hash`/`sshs_legacy_hash`, as sd-scripts' LoRANetwork.save_weights writes for
    sd-webui-additional-networks: hashes of the file serialized with only the `ss_*` metadata;
    the model hash covers the bytes after the header, the legacy one 64 KiB at offset 1 MiB."""
    import hashlib

    from safetensors.torch import save

    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = save(tensors, metadata=ss_only)
    header = int.from_bytes(data[:8], "little")
    legacy = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return {
        "sshs_model_hash": hashlib.sha256(data[8 + header :]).hexdigest(),
        "sshs_legacy_hash": legacy,
    }


def parse_dtype(dtype):
    """None, a torch dtype, or one of fp16/bf16/fp32 -> torch dtype or None."""
    if dtype is None or not isinstance(dtype, str):
        return dtype
    import torch

    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype not in table:
        raise fail("F710", f"Unknown dtype `{dtype}`.", "Use fp16, bf16 or fp32.")
    return table[dtype]


def convert_file(src, dst, to: str, dtype=None, alpha: float | None = None,
                 allow_lossy: bool = False, sgm: bool = True) -> tuple[LoraFile, DiagnosticBag]:  # fmt: skip
    """Convert `src` to layout `to` ("kohya" or "diffusers") at `dst`; never overwrites `src`.

    Returns the file read and the warnings; raises DiagnosticError on errors.
    """
    bag = DiagnosticBag(file=str(src))
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):  # float() reads "nan"
        raise fail("F712", f"--alpha {alpha} is not a positive number.", "e.g. --alpha 8")
    if real_path(dst) == real_path(src):
        raise fail("F713", "The output would overwrite the input file.", "Choose another -o.")
    lora = read_lora(src)
    modules = check_writable(lora.modules, to, allow_lossy, bag)
    if not modules and not bag.has_errors:
        bag.error("F711", "The file holds no module that can be converted.", "Check the input.")
    bag.raise_if_errors()
    fill_alphas(modules, alpha, bag)
    layout = to if to == "diffusers" or sgm else "kohya-diffusers"
    write_lora(modules, dst, layout, lora.metadata, dtype)
    lora.written = len(modules)
    return lora, bag
