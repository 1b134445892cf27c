"""SDXL base models, offline: a diffusers folder or a single-file `.safetensors`.

The architecture configs of SDXL base 1.0 ship with the package (`lorafile/data/sdxl/*.json`),
so a single-file checkpoint in the original (SGM) layout, the one kohya sd-scripts, ComfyUI and
AUTOMATIC1111 use, loads with no download. A single file written by lorafile (the tiny test
model) carries its own configs in the safetensors metadata (`lorafile.configs`), which is how a
model of any size round-trips.

Pickle checkpoints (`.ckpt`, `.pt`, `.bin`) are refused unless the caller allows them: unpickling
runs whatever code the file contains.

Everything heavy (torch, diffusers, transformers) is imported inside functions: the compile path
imports nothing from here.

Diagnostic codes (files): F701 path missing, F702 pickle refused, F703 not an SDXL checkpoint,
F704 no tokenizer for a full-size single file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from lorafile.compiler.diagnostics import fail
from lorafile.runtime.models import sgm_keys

PARTS = ("unet", "text_encoder", "text_encoder_2", "vae", "tokenizer", "tokenizer_2", "scheduler")
MODEL_PARTS = ("unet", "text_encoder", "text_encoder_2", "vae")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CONFIG_METADATA_KEY = "lorafile.configs"
TOKENIZER_METADATA_KEY = "lorafile.tokenizer"


@dataclass
class SDXLComponents:
    """The pieces of an SDXL pipeline; a part that was not loaded is None."""

    unet: Any = None
    text_encoder: Any = None
    text_encoder_2: Any = None
    vae: Any = None
    tokenizer: Any = None
    tokenizer_2: Any = None
    scheduler: Any = None

    def noise_scheduler(self):
        """A DDPMScheduler with this model's training schedule (SDXL ships an Euler config;
        the betas and timestep count are what training needs)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler.config)

    def pipeline(self):
        """A StableDiffusionXLPipeline over these components (sharing the modules)."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(**{f.name: getattr(self, f.name) for f in fields(self)})

    def configs(self) -> dict[str, dict]:
        """The diffusers/transformers configs of the loaded model parts, as plain dicts."""
        out = {}
        for name in MODEL_PARTS:
            model = getattr(self, name)
            if model is not None:
                out[name] = _config_dict(model)
        if self.scheduler is not None:
            out["scheduler"] = dict(self.scheduler.config)
        return out


def _config_dict(model) -> dict:
    config = model.config
    if hasattr(config, "to_dict"):
        data = config.to_dict()
        data.pop("transformers_version", None)
        return data
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


# --- shipped configs and the meta-device architecture ---------------------------------------


def sdxl_config(part: str) -> dict:
    """The shipped SDXL base 1.0 config of `part` (unet, text_encoder, text_encoder_2, vae,
    scheduler)."""
    text = resources.files("lorafile").joinpath(f"data/sdxl/{part}.json").read_text()
    return json.loads(text)


def sdxl_configs() -> dict[str, dict]:
    return {part: sdxl_config(part) for part in (*MODEL_PARTS, "scheduler")}


def build_models(configs: dict[str, dict], parts=MODEL_PARTS, empty: bool = False) -> dict:
    """Instantiate model parts from configs. `empty`: parameters on the meta device (no memory,
    no init), buffers on CPU, ready for `load_state_dict(..., assign=True)`."""
    import contextlib

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    builders = {
        "unet": lambda c: UNet2DConditionModel.from_config(c),
        "vae": lambda c: AutoencoderKL.from_config(c),
        "text_encoder": lambda c: CLIPTextModel(_clip_config(CLIPTextConfig, c)),
        "text_encoder_2": lambda c: CLIPTextModelWithProjection(_clip_config(CLIPTextConfig, c)),
    }
    out = {}
    for part in parts:
        ctx = init_empty_weights() if empty else contextlib.nullcontext()
        with ctx:
            out[part] = builders[part](configs[part])
    return out


def _clip_config(cls, data: dict):
    keep = {k: v for k, v in data.items() if k not in ("architectures", "model_type")}
    return cls(**keep)


def build_sdxl_meta(parts=("unet", "text_encoder", "text_encoder_2")) -> SDXLComponents:
    """The FULL-size SDXL base 1.0 UNet and text encoders on the meta device: the exact module
    tree and parameter shapes, no memory. For key maps and exact memory accounting."""
    import torch

    configs = sdxl_configs()
    with torch.device("meta"):
        models = build_models(configs, parts)
    return SDXLComponents(**models)


# --- single file <-> diffusers state dicts --------------------------------------------------


def to_single_file_state(components: SDXLComponents) -> dict:
    """All model weights under their original single-file (SGM/LDM) names."""
    out: dict = {}
    unet_cfg = dict(components.unet.config)
    for key, value in components.unet.state_dict().items():
        out[sgm_keys.UNET_PREFIX + sgm_keys.unet_to_sgm(key, unet_cfg)] = value
    for key, value in components.text_encoder.state_dict().items():
        if "position_ids" not in key:
            out[sgm_keys.TE1_PREFIX + sgm_keys.te1_to_sgm(key)] = value
    te2 = sgm_keys.te2_state_to_openclip(components.text_encoder_2.state_dict())
    out.update({sgm_keys.TE2_PREFIX + k: v for k, v in te2.items()})
    vae_cfg = dict(components.vae.config)
    for key, value in components.vae.state_dict().items():
        name = sgm_keys.vae_to_ldm(key, vae_cfg)
        if sgm_keys.is_vae_attention_matrix(name):
            value = value[:, :, None, None]
        out[sgm_keys.VAE_PREFIX + name] = value
    return {k: v.contiguous() for k, v in out.items()}


def from_single_file_state(state: dict, configs: dict[str, dict]) -> dict[str, dict]:
    """Split a single-file state dict into diffusers/transformers state dicts per part."""
    parts: dict[str, dict] = {p: {} for p in MODEL_PARTS}
    for key, value in state.items():
        if key.startswith(sgm_keys.UNET_PREFIX):
            name = sgm_keys.unet_from_sgm(key[len(sgm_keys.UNET_PREFIX) :], configs["unet"])
            parts["unet"][name] = value
        elif key.startswith(sgm_keys.TE1_PREFIX):
            name = key[len(sgm_keys.TE1_PREFIX) :]
            if "position_ids" not in name:
                parts["text_encoder"][name.removeprefix("text_model.")] = value
        elif key.startswith(sgm_keys.TE2_PREFIX):
            parts["text_encoder_2"][key[len(sgm_keys.TE2_PREFIX) :]] = value
        elif key.startswith(sgm_keys.VAE_PREFIX):
            name = key[len(sgm_keys.VAE_PREFIX) :]
            if sgm_keys.is_vae_attention_matrix(name):
                value = value[:, :, 0, 0]
            parts["vae"][sgm_keys.vae_from_ldm(name, configs["vae"])] = value
    parts["text_encoder_2"] = sgm_keys.te2_state_from_openclip(parts["text_encoder_2"])
    return parts


def save_single_file(
    components: SDXLComponents, path: str | os.PathLike, tokenizer: str = ""
) -> None:
    """Write one SDXL `.safetensors` in the original layout, with the configs in its metadata."""
    from safetensors.torch import save_file

    metadata = {CONFIG_METADATA_KEY: json.dumps(components.configs(), default=list)}
    if tokenizer:
        metadata[TOKENIZER_METADATA_KEY] = tokenizer
    save_file(to_single_file_state(components), str(path), metadata=metadata)


# --- loading --------------------------------------------------------------------------------


def check_model_path(path: str | os.PathLike, allow_pickle: bool = False) -> Path:
    """Raise a DiagnosticError for a missing path or a refused pickle checkpoint."""
    p = Path(path)
    if not p.exists():
        raise fail(
            "F701",
            f"The base model `{p}` does not exist.",
            "Give a diffusers folder (with model_index.json) or a single-file SDXL .safetensors.",
        )
    if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise fail(
            "F702",
            f"`{p.name}` is a pickle checkpoint; loading it would run any code it contains.",
            "Convert it to .safetensors, or pass --allow-pickle if you trust where it came from.",
        )
    return p


def load_sdxl(
    path: str | os.PathLike,
    dtype=None,
    allow_pickle: bool = False,
    parts=PARTS,
    tokenizer_path: str | os.PathLike | None = None,
    variant: str | None = None,
) -> SDXLComponents:
    """Load an SDXL model offline from a diffusers folder or a single-file checkpoint.

    `dtype` (a torch dtype) casts the model weights; `parts` limits what is loaded (e.g. only
    the UNet); `tokenizer_path` is a diffusers folder whose tokenizer/ and tokenizer_2/ are used
    for a full-size single file (which carries no vocabulary); `variant` (e.g. "fp16") picks a
    diffusers folder's `*.fp16.safetensors` weights in each part that has them. Raises
    DiagnosticError (F70x). A hub id is resolved first by runtime/models/hub.py.
    """
    p = check_model_path(path, allow_pickle)
    if tuple(parts) == ("vae",):
        return SDXLComponents(vae=load_vae(p, dtype, allow_pickle, variant))
    if p.is_dir():
        return _load_folder(p, dtype, parts, allow_pickle, variant)
    return _load_single_file(p, dtype, parts, tokenizer_path)


def load_vae(path: str | os.PathLike, dtype=None, allow_pickle: bool = False, variant=None):
    """An SDXL VAE from a diffusers VAE folder (e.g. sdxl-vae-fp16-fix), a pipeline folder, a
    standalone VAE file (LDM or diffusers names) or a full single-file checkpoint."""
    from diffusers import AutoencoderKL

    p = check_model_path(path, allow_pickle)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    if p.is_dir():
        if (p / "vae" / "config.json").exists():
            kwargs |= folder_weights(p / "vae", "vae", allow_pickle)
            kwargs["variant"] = part_variant(p / "vae", variant)
            return AutoencoderKL.from_pretrained(
                p, subfolder="vae", local_files_only=True, **kwargs
            ).eval()
        if (p / "config.json").exists():
            kwargs |= folder_weights(p, "vae", allow_pickle)
            kwargs["variant"] = part_variant(p, variant)
            return AutoencoderKL.from_pretrained(p, local_files_only=True, **kwargs).eval()
        raise fail(
            "F703",
            f"`{p}` holds no VAE (no config.json, no vae/config.json).",
            "Point to a diffusers VAE folder, a pipeline folder or a VAE .safetensors file.",
        )
    if p.suffix.lower() == ".safetensors" and _has_unet(p):
        return _load_single_file(p, dtype, ("vae",), None).vae  # reads only the VAE tensors
    state, metadata = _read_single_file(p, ("",), dtype)
    if any(k.startswith(sgm_keys.UNET_PREFIX) for k in state):
        return _load_single_file(p, dtype, ("vae",), None).vae
    return _vae_from_state(state, metadata, p.name)


def _has_unet(p: Path) -> bool:
    """Whether a safetensors file holds a UNet (reads the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return any(k.startswith(sgm_keys.UNET_PREFIX) for k in f.keys())  # noqa: SIM118
    except Exception:  # unreadable: let _read_single_file report it properly
        return False


def _vae_from_state(state: dict, metadata: dict, name: str):
    state = {k.removeprefix(sgm_keys.VAE_PREFIX): v for k, v in state.items()}
    if CONFIG_METADATA_KEY in metadata:
        config = metadata_configs(metadata, f"`{name}`", parts=("vae",))["vae"]
    else:
        config = sdxl_config("vae")
        probe = state.get("encoder.conv_in.weight")
        if probe is None or tuple(probe.shape) != (128, 3, 3, 3):
            raise fail(
                "F703",
                f"`{name}` is not an SDXL VAE (no encoder.conv_in of shape 128x3x3x3).",
                "Use an SDXL VAE such as sdxl_vae.safetensors or madebyollin/sdxl-vae-fp16-fix.",
            )
    if any(".down_blocks." in k or ".up_blocks." in k for k in state):
        diffusers_state = state  # already diffusers names
    else:
        diffusers_state = {}
        for key, value in state.items():
            if sgm_keys.is_vae_attention_matrix(key):
                value = value[:, :, 0, 0]
            diffusers_state[sgm_keys.vae_from_ldm(key, config)] = value
    vae = build_models({"vae": config}, ("vae",), empty=True)["vae"]
    vae.load_state_dict(diffusers_state, strict=True, assign=True)
    return vae.eval()


SAFETENSORS_WEIGHTS = {
    # diffusers and transformers look for these names first (or their sharded index)
    "diffusers": "diffusion_pytorch_model.safetensors",
    "transformers": "model.safetensors",
}


def folder_weights(folder: Path, part: str, allow_pickle: bool) -> dict:
    """The `from_pretrained` arguments that load a model part's weights from safetensors only.

    Checked here, before any loader runs: a part folder without safetensors weights but with a
    pickle file (`.bin`, `.pt`, `.ckpt`) is F702 unless pickles are allowed (diffusers and
    transformers would otherwise fall back to unpickling it, which runs its code); one with no
    weights at all is F703. `use_safetensors=True` then keeps the loaders from falling back.
    """
    names = [f.name for f in folder.iterdir()] if folder.is_dir() else []
    stems = tuple(name.removesuffix(".safetensors") for name in SAFETENSORS_WEIGHTS.values())
    if any(n.startswith(stems) and n.endswith(".safetensors") for n in names):  # fp16 variants too
        return {"use_safetensors": True}
    pickles = sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
    if allow_pickle and pickles:
        return {}  # the user trusts the file: the loaders' own choice
    if pickles:
        raise fail(
            "F702",
            f"The {part} weights in `{folder}` are a pickle file ({pickles[0]}); loading them "
            "would run any code they contain.",
            "Use a copy of the model with .safetensors weights (most are published both ways), "
            "or pass --allow-pickle if you trust where it came from.",
        )
    raise fail(
        "F703",
        f"`{folder}` holds no weights for the {part} (no "
        f"{' or '.join(sorted(SAFETENSORS_WEIGHTS.values()))}).",
        "Check that the model folder was downloaded completely.",
    )


def part_variant(folder: Path, variant: str | None) -> str | None:
    """`variant` if the part folder has weights of that variant, else None (the plain weights),
    as diffusers falls back; so `variant fp16` also loads repositories without fp16 files."""
    if variant is None:
        return None
    tagged = (f"*.{variant}.safetensors", f"*.{variant}-*.safetensors", f"*.{variant}.bin")
    return variant if any(any(folder.glob(pattern)) for pattern in tagged) else None


def _load_folder(
    p: Path, dtype, parts, allow_pickle: bool = False, variant: str | None = None
) -> SDXLComponents:
    if not (p / "model_index.json").exists() or not (p / "unet").is_dir():
        raise fail(
            "F703",
            f"`{p}` is a folder but not a diffusers SDXL model (no model_index.json or unet/).",
            "Point to the folder that holds model_index.json, unet/, vae/, text_encoder*/.",
        )
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    loaders = {
        "unet": UNet2DConditionModel,
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
    }
    # Every part is checked before the first one loads: a refused folder loads nothing.
    weights = {
        part: folder_weights(p / part, part, allow_pickle) for part in parts if part in loaders
    }
    out = SDXLComponents()
    for part in parts:
        if part in loaders:
            kwargs = {"torch_dtype": dtype} if dtype is not None else {}
            kwargs |= weights[part]
            model = loaders[part].from_pretrained(
                p,
                subfolder=part,
                local_files_only=True,
                variant=part_variant(p / part, variant),
                **kwargs,
            )
            setattr(out, part, model.eval())
        elif part.startswith("tokenizer"):
            setattr(
                out, part, CLIPTokenizer.from_pretrained(p, subfolder=part, local_files_only=True)
            )
        elif part == "scheduler":
            out.scheduler = EulerDiscreteScheduler.from_pretrained(p, subfolder="scheduler")
    return out


_PART_PREFIX = {
    "unet": sgm_keys.UNET_PREFIX,
    "text_encoder": sgm_keys.TE1_PREFIX,
    "text_encoder_2": sgm_keys.TE2_PREFIX,
    "vae": sgm_keys.VAE_PREFIX,
}
_PROBES = (
    sgm_keys.UNET_PREFIX + "input_blocks.0.0.weight",
    sgm_keys.TE2_PREFIX + "token_embedding.weight",
)


def _read_single_file(p: Path, prefixes=("",), dtype=None) -> tuple[dict, dict]:
    """Tensors whose key starts with one of `prefixes` (plus the SDXL shape probes), cast to
    `dtype` as they are read, so a 7 GB checkpoint never sits in memory twice."""

    def keep(key: str) -> bool:
        return key in _PROBES or key.startswith(tuple(prefixes))

    def cast(t):
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    if p.suffix.lower() in PICKLE_SUFFIXES:
        import torch

        data = torch.load(p, map_location="cpu", weights_only=False)  # allowed by the caller
        data = data.get("state_dict", data)
        return {k: cast(v) for k, v in data.items() if keep(k)}, {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: cast(f.get_tensor(k)) for k in f.keys() if keep(k)}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise unreadable_safetensors(p, err) from err
    return state, metadata


def unreadable_safetensors(path: Path, err: Exception):
    """F703 for a base model whose safetensors header cannot be read (truncated, damaged)."""
    return fail(
        "F703",
        f"`{path.name}` could not be read as safetensors: {err}.",
        "Check that the download finished; the file may be truncated or not safetensors.",
    )


def metadata_configs(metadata: dict, name: str, parts=MODEL_PARTS) -> dict[str, dict]:
    """The configs lorafile wrote into a single file's metadata (`save_single_file`); F703
    when that entry was damaged (edited or truncated by another tool), not a JSON traceback.
    `name` is how messages name the file ("`model.safetensors`", "the file")."""
    try:
        configs = json.loads(metadata[CONFIG_METADATA_KEY])
    except ValueError as err:
        configs, why = None, f"is not valid JSON ({err})"
    else:
        missing = [
            p
            for p in parts
            if not isinstance(configs, dict) or not isinstance(configs.get(p), dict)
        ]
        why = f"has no config for {', '.join(missing)}" if missing else ""
    if why:
        raise fail(
            "F703",
            f"The `{CONFIG_METADATA_KEY}` metadata of {name} {why}: the model's configs cannot "
            "be read.",
            "Save the model again with lorafile (`lorafile demo` writes the tiny one), or use a file "
            "whose metadata no other tool has edited.",
        )
    return configs


def single_file_configs(state: dict, metadata: dict, name: str = "the file") -> dict[str, dict]:
    """The configs for a single-file state dict: lorafile's own metadata, else SDXL base 1.0
    when the tensor shapes are SDXL's; DiagnosticError otherwise."""
    if CONFIG_METADATA_KEY in metadata:
        return metadata_configs(metadata, name)
    probe = state.get(sgm_keys.UNET_PREFIX + "input_blocks.0.0.weight")
    te2 = state.get(sgm_keys.TE2_PREFIX + "token_embedding.weight")
    if probe is None:
        raise fail(
            "F703",
            f"{name} is not an SDXL checkpoint: it has no `model.diffusion_model.` UNet weights.",
            "lorafile loads SDXL base models (single-file SGM layout or a diffusers folder).",
        )
    if tuple(probe.shape) != (320, 4, 3, 3) or te2 is None or te2.shape[-1] != 1280:
        raise fail(
            "F703",
            f"{name} has a UNet but not SDXL's shapes (conv_in {tuple(probe.shape)}); "
            "it looks like an SD 1.x/2.x or another model.",
            "Use an SDXL base checkpoint (for example sd_xl_base_1.0.safetensors).",
        )
    return sdxl_configs()


def _load_single_file(p: Path, dtype, parts, tokenizer_path) -> SDXLComponents:
    from diffusers import EulerDiscreteScheduler

    wanted = [part for part in MODEL_PARTS if part in parts]
    state, metadata = _read_single_file(p, [_PART_PREFIX[w] for w in wanted], dtype)
    configs = single_file_configs(state, metadata, f"`{p.name}`")
    split = from_single_file_state(state, configs)
    models = build_models(configs, wanted, empty=True)
    out = SDXLComponents()
    for part, model in models.items():
        model.load_state_dict(split[part], strict=True, assign=True)
        setattr(out, part, model.eval())
    if "scheduler" in parts:
        # A file saved without a scheduler takes SDXL base 1.0's, as a file without metadata does.
        schedule = configs.get("scheduler") or sdxl_config("scheduler")
        out.scheduler = EulerDiscreteScheduler.from_config(schedule)
    if "tokenizer" in parts or "tokenizer_2" in parts:
        out.tokenizer, out.tokenizer_2 = _single_file_tokenizers(p, metadata, tokenizer_path)
    return out


def _single_file_tokenizers(p: Path, metadata: dict, tokenizer_path):
    from transformers import CLIPTokenizer

    if metadata.get(TOKENIZER_METADATA_KEY) == "byte-level":
        from lorafile.runtime.models.tokenizers import build_tokenizers

        return build_tokenizers()
    for folder in (tokenizer_path, p.parent):
        if folder and (Path(folder) / "tokenizer" / "tokenizer_config.json").exists():
            return tuple(
                CLIPTokenizer.from_pretrained(folder, subfolder=s, local_files_only=True)
                for s in ("tokenizer", "tokenizer_2")
            )
    raise fail(
        "F704",
        f"`{p.name}` holds no tokenizer vocabulary, and no tokenizer/ and tokenizer_2/ folders "
        "were found beside it.",
        "Copy the tokenizer/ and tokenizer_2/ folders of stabilityai/stable-diffusion-xl-base-1.0 "
        "next to the file, or load a diffusers folder instead.",
    )
