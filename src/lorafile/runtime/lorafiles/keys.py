"""LoRA module names: peft/diffusers paths <-> kohya names (original SDXL or diffusers blocks).

A LoRA file names the layer each adapter belongs to. Three spellings exist for SDXL:

* peft / diffusers: the dotted module path inside a component, prefixed by the component:
  `unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`,
  `text_encoder.text_model.encoder.layers.0.self_attn.q_proj` (transformers 5 flattened
  CLIPTextModel to `encoder.layers...`; both spellings are read, `text_model.` is written).
* kohya with the ORIGINAL SDXL block names, as sd-scripts writes (its UNet is SGM-named):
  `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`,
  `lora_te1_text_model_encoder_layers_0_self_attn_q_proj` (TE1 = CLIP-L), `lora_te2_...` (bigG).
  Source: sd-scripts `networks/lora.py` (prefix + module path with `.` -> `_`).
* kohya with diffusers block names (diffusers' own kohya export, LyCORIS's kohya wrapper on a
  diffusers UNet): `lora_unet_down_blocks_1_attentions_0_...`; SimpleTuner's LyCORIS files use
  the prefix `lycoris_` with diffusers names.

Underscores make kohya names ambiguous to parse, so the reverse map is a lookup table built
from the architecture itself (every Linear/Conv2d of the UNet and text encoders), for the
real SDXL on the meta device by default or for any given model (the tiny one).

Which layers a target set covers follows kohya (`docs/train_network_README`, `networks/lora.py`):
attention = Transformer2DModel's proj_in/proj_out and attn1/attn2 q/k/v/out; ff = the GEGLU
feed-forward; conv = everything in ResnetBlock2D/Downsample2D/Upsample2D (3x3 convs, the time
embedding projection, 1x1 shortcuts), as kohya's conv_dim and LyCORIS's LoCon train.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lorafile.runtime.models import sgm_keys

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
LYCORIS_PREFIX = "lycoris_"

_ATTENTION = re.compile(
    r"(attentions\.\d+\.(proj_in|proj_out)|attn[12]\.(to_q|to_k|to_v|to_out\.0))$"
)
_FF = re.compile(r"\.ff\.net\.(0\.proj|2)$")
_CONV = re.compile(
    r"(resnets\.\d+\.(conv1|conv2|time_emb_proj|conv_shortcut)|(down|up)samplers\.0\.conv)$"
)
_TEXT = re.compile(r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def category(component: str, path: str) -> str | None:
    """The target group of a module: attention, ff, conv (UNet), text (text encoders), or None
    for layers kohya never targets (conv_in/out, time and added-condition embeddings)."""
    if component == "unet":
        for name, pattern in (("attention", _ATTENTION), ("ff", _FF), ("conv", _CONV)):
            if pattern.search(path):
                return name
        return None
    return "text" if _TEXT.search(path) else None


def canonical_path(component: str, path: str) -> str:
    """The path lorafile stores: text-encoder paths always start with `text_model.`."""
    if component != "unet" and not path.startswith(("text_model.", "text_projection")):
        return "text_model." + path
    return path


def model_path(model, path: str) -> str:
    """The name of `path` inside this `model` instance (drops `text_model.` for transformers
    5's flattened CLIPTextModel)."""
    if hasattr(model, "text_model") or not path.startswith("text_model."):
        return path
    return path.removeprefix("text_model.")


def kohya_name(
    component: str, path: str, unet_config: Mapping | None = None, sgm: bool = True
) -> str:
    """kohya module name of a diffusers path: original SDXL block names unless `sgm=False`."""
    path = canonical_path(component, path)
    if component == "unet" and sgm:
        path = sgm_keys.unet_to_sgm(path, unet_config or _sdxl_unet_config())
    return KOHYA_PREFIX[component] + path.replace(".", "_")


def peft_name(component: str, path: str) -> str:
    """diffusers/peft file prefix of a module: `unet.down_blocks...`, `text_encoder.text_model...`."""
    return f"{component}.{canonical_path(component, path)}"


@dataclass(frozen=True)
class Module:
    """One adaptable layer: component, canonical diffusers path, kind (linear/conv) and shape."""

    component: str
    path: str
    kind: str  # "linear", "conv1x1" or "conv3x3"
    in_features: int
    out_features: int

    @property
    def category(self) -> str | None:
        return category(self.component, self.path)


class KeyMap:
    """Every adaptable module of an SDXL-shaped model and all its names, both ways."""

    def __init__(self, modules: Iterable[Module], unet_config: Mapping):
        self.modules = {(m.component, m.path): m for m in modules}
        self.unet_config = dict(unet_config)
        self._lookup: dict[str, tuple[str, str]] = {}
        for m in self.modules.values():
            for name in self.names(m.component, m.path):
                self._lookup[name] = (m.component, m.path)

    @classmethod
    def from_models(cls, models: Mapping[str, object]) -> KeyMap:
        """Build from live (or meta) models: {"unet": unet, "text_encoder": te1, ...}."""
        found = []
        for component in COMPONENTS:
            model = models.get(component)
            if model is not None:
                found.extend(_adaptable(component, model))
        unet = models.get("unet")
        config = dict(unet.config) if unet is not None else _sdxl_unet_config()
        return cls(found, config)

    def names(self, component: str, path: str) -> list[str]:
        """Every spelling a file may use for this module (kohya SGM first)."""
        names = [kohya_name(component, path, self.unet_config), peft_name(component, path)]
        if component == "unet":
            names += [
                kohya_name(component, path, sgm=False),
                LYCORIS_PREFIX + path.replace(".", "_"),
            ]
        else:
            short = path.removeprefix("text_model.")
            names.append(KOHYA_PREFIX[component] + short.replace(".", "_"))
            names.append(f"{component}.{short}")
        return names

    def resolve(self, name: str) -> tuple[str, str] | None:
        """(component, canonical path) for a module name in any spelling, or None."""
        return self._lookup.get(name)

    def kohya(self, component: str, path: str, sgm: bool = True) -> str:
        return kohya_name(component, path, self.unet_config, sgm=sgm)

    def select(self, targets: Iterable[str], text_encoder: bool = False) -> list[Module]:
        """The modules a recipe's targets cover, in model order (kohya's selection)."""
        wanted = set(targets) | ({"text"} if text_encoder else set())
        return [m for m in self.modules.values() if m.category in wanted]


def _adaptable(component: str, model) -> list[Module]:
    import torch

    out = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            kind, fan_in, fan_out = "linear", module.in_features, module.out_features
        elif isinstance(module, torch.nn.Conv2d):
            kind = "conv3x3" if module.kernel_size != (1, 1) else "conv1x1"
            fan_in, fan_out = module.in_channels, module.out_channels
        else:
            continue
        if re.search(r"\.(lora_|hada_|lokr_)", name):
            continue  # peft's own sub-layers of an already adapted model
        name = name.removesuffix(".base_layer")  # the layer peft wrapped
        out.append(Module(component, canonical_path(component, name), kind, fan_in, fan_out))
    return out


@functools.cache
def _sdxl_unet_config() -> dict:
    from lorafile.runtime.models.sdxl import sdxl_config

    return sdxl_config("unet")


MODULE_TABLE = "sdxl/lora_modules.json"


def meta_sdxl_keymap() -> KeyMap:
    """The key map of the full-size SDXL base 1.0, built from the architecture on the meta
    device (imports diffusers/transformers; a few seconds)."""
    from lorafile.runtime.models.sdxl import build_sdxl_meta

    meta = build_sdxl_meta()
    return KeyMap.from_models({c: getattr(meta, c) for c in COMPONENTS})


def module_table(keymap: KeyMap) -> list[list]:
    """The rows of the shipped module table: component, path, kind, in, out."""
    return [
        [m.component, m.path, m.kind, m.in_features, m.out_features]
        for m in keymap.modules.values()
    ]


@functools.cache
def sdxl_keymap() -> KeyMap:
    """The key map of the full-size SDXL base 1.0. Read from the module table shipped in
    `lorafile/data/sdxl/lora_modules.json` (a test checks it equals `meta_sdxl_keymap()`), so
    `inspect` and `convert` need not import diffusers."""
    import json
    from importlib import resources

    text = resources.files("lorafile").joinpath("data", MODULE_TABLE).read_text()
    rows = json.loads(text)
    return KeyMap([Module(*row) for row in rows], _sdxl_unet_config())


def peft_target_modules(
    models: Mapping[str, object], targets: Iterable[str]
) -> dict[str, list[str]]:
    """Exact peft `target_modules` per component for a recipe's targets ("attention", "ff",
    "conv"; "text" for the text encoders), named as in these model instances."""
    keymap = KeyMap.from_models(models)
    out: dict[str, list[str]] = {}
    for m in keymap.select(targets):
        out.setdefault(m.component, []).append(model_path(models[m.component], m.path))
    return out
