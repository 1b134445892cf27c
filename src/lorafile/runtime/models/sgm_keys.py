"""Names in diffusers' SDXL layout <-> names in the original (SGM) single-file layout.

Single-file SDXL checkpoints (the files kohya sd-scripts, ComfyUI and AUTOMATIC1111 load) use
Stability AI's generative-models names: `model.diffusion_model.input_blocks.4.1...` for the UNet,
`conditioner.embedders.0.transformer...` (HF CLIP-L) and `conditioner.embedders.1.model...`
(OpenCLIP ViT-bigG) for the text encoders, `first_stage_model...` for the VAE. The maps here are
computed from the diffusers configs (block types, layers per block), so the same code serves the
real SDXL and the tiny test model. Reference for the layout: diffusers'
`loaders/single_file_utils.py` (convert_ldm_unet_checkpoint and friends) reads this layout; kohya's
`library/sdxl_model_util.py` writes it.

Pure string functions and one tensor-reshaping pass; torch is only touched by the state-dict
helpers, which receive tensors from the caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

UNET_PREFIX = "model.diffusion_model."
TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
VAE_PREFIX = "first_stage_model."

# ResnetBlock2D: diffusers name -> LDM ResBlock name (in_layers = [norm, SiLU, conv], ...).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_RESNET_BACK = {v: k for k, v in _UNET_RESNET.items()}

_UNET_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_FIXED_BACK = {v: k for k, v in _UNET_FIXED.items()}


def _layers(config: Mapping, index: int) -> int:
    lpb = config.get("layers_per_block", 2)
    return lpb[index] if isinstance(lpb, list | tuple) else int(lpb)


def _up_has_attention(config: Mapping, index: int) -> bool:
    return "CrossAttn" in config["up_block_types"][index]


def _split_fixed(name: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new, name[len(old) :]
    return None


def _resnet_inner(rest: str, table: Mapping[str, str]) -> str:
    """Rename the first component(s) of `rest` ('.conv1.weight') through a resnet table."""
    body = rest.lstrip(".")
    for old, new in table.items():
        if body == old or body.startswith(old + "."):
            return "." + new + body[len(old) :]
    return rest


def unet_to_sgm(name: str, config: Mapping) -> str:
    """Translate a diffusers UNet module or parameter path to its SGM name (no prefix).

    `down_blocks.1.attentions.0.proj_in` -> `input_blocks.4.1.proj_in` for SDXL's config.
    Raises KeyError for names outside the SDXL UNet structure.
    """
    fixed = _split_fixed(name, _UNET_FIXED)
    if fixed:
        return fixed[0] + fixed[1]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)(.*)$", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        start = 1 + sum(_layers(config, b) + 1 for b in range(i))
        if kind == "downsamplers":
            return f"input_blocks.{start + _layers(config, i)}.0.op" + rest.replace(".conv", "", 1)
        if kind == "resnets":
            return f"input_blocks.{start + j}.0" + _resnet_inner(rest, _UNET_RESNET)
        return f"input_blocks.{start + j}.1" + rest
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)(.*)$", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return "middle_block.1" + rest
        return f"middle_block.{2 * j}" + _resnet_inner(rest, _UNET_RESNET)
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)(.*)$", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        start = sum(_layers(config, len(config["up_block_types"]) - 1 - b) + 1 for b in range(i))
        depth = _layers(config, len(config["up_block_types"]) - 1 - i) + 1
        if kind == "upsamplers":
            slot = 2 if _up_has_attention(config, i) else 1
            return f"output_blocks.{start + depth - 1}.{slot}" + rest
        if kind == "resnets":
            return f"output_blocks.{start + j}.0" + _resnet_inner(rest, _UNET_RESNET)
        return f"output_blocks.{start + j}.1" + rest
    raise KeyError(f"`{name}` is not a module of the SDXL UNet")


def _down_position(config: Mapping, n: int) -> tuple[int, int, bool]:
    """input_blocks index n (>= 1) -> (down block, layer, is_downsampler)."""
    pos = n - 1
    for b in range(len(config["down_block_types"])):
        size = _layers(config, b) + 1
        if pos < size:
            return b, pos, pos == size - 1
        pos -= size
    raise KeyError(f"input_blocks.{n} is past the last down block")


def _up_position(config: Mapping, n: int) -> tuple[int, int]:
    pos = n
    count = len(config["up_block_types"])
    for b in range(count):
        size = _layers(config, count - 1 - b) + 1
        if pos < size:
            return b, pos
        pos -= size
    raise KeyError(f"output_blocks.{n} is past the last up block")


def unet_from_sgm(name: str, config: Mapping) -> str:
    """Inverse of `unet_to_sgm`: `input_blocks.4.1.proj_in` -> `down_blocks.1.attentions.0.proj_in`."""
    fixed = _split_fixed(name, _UNET_FIXED_BACK)
    if fixed:
        return fixed[0] + fixed[1]
    m = re.match(r"(input_blocks|middle_block|output_blocks)\.(\d+)(?:\.(\d+))?(.*)$", name)
    if not m:
        raise KeyError(f"`{name}` is not a module of the SDXL UNet")
    kind, n, k, rest = m[1], int(m[2]), m[3], m[4]
    if kind == "middle_block":
        if n == 1:
            return "mid_block.attentions.0" + (f".{k}" if k else "") + rest
        inner = (f".{k}" if k else "") + rest
        return f"mid_block.resnets.{n // 2}" + _resnet_inner(inner, _UNET_RESNET_BACK)
    if kind == "input_blocks":
        b, j, is_down = _down_position(config, n)
        if is_down:
            return f"down_blocks.{b}.downsamplers.0.conv" + rest.replace(".op", "", 1)
        target = "resnets" if k == "0" else "attentions"
        tail = _resnet_inner(rest, _UNET_RESNET_BACK) if k == "0" else rest
        return f"down_blocks.{b}.{target}.{j}" + tail
    b, j = _up_position(config, n)
    if k == "0":
        return f"up_blocks.{b}.resnets.{j}" + _resnet_inner(rest, _UNET_RESNET_BACK)
    if k == "1" and _up_has_attention(config, b):
        return f"up_blocks.{b}.attentions.{j}" + rest
    return f"up_blocks.{b}.upsamplers.0" + rest


# --- VAE (AutoencoderKL) <-> LDM first_stage_model -----------------------------------------

_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def vae_to_ldm(name: str, config: Mapping) -> str:
    """Translate an AutoencoderKL parameter name to the LDM `first_stage_model` name (no prefix)."""
    blocks = len(config["block_out_channels"])
    name = name.replace("conv_shortcut", "nin_shortcut")
    m = re.match(r"(encoder|decoder)\.(.*)$", name)
    if not m:
        return name  # quant_conv, post_quant_conv
    side, rest = m[1], m[2]
    rest = re.sub(r"^conv_norm_out", "norm_out", rest)
    rest = re.sub(r"^mid_block\.resnets\.(\d+)", lambda x: f"mid.block_{int(x[1]) + 1}", rest)
    a = re.match(r"^mid_block\.attentions\.0\.(.*)$", rest)
    if a:
        rest = "mid.attn_1." + _rename_prefix(a[1], _VAE_ATTN)
    rest = re.sub(r"^down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", rest)
    rest = re.sub(r"^down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", rest)

    rest = re.sub(
        r"^up_blocks\.(\d+)\.resnets\.", lambda x: f"up.{blocks - 1 - int(x[1])}.block.", rest
    )
    rest = re.sub(
        r"^up_blocks\.(\d+)\.upsamplers\.0\.",
        lambda x: f"up.{blocks - 1 - int(x[1])}.upsample.",
        rest,
    )
    return f"{side}.{rest}"


def vae_from_ldm(name: str, config: Mapping) -> str:
    """Inverse of `vae_to_ldm`."""
    blocks = len(config["block_out_channels"])
    name = name.replace("nin_shortcut", "conv_shortcut")
    m = re.match(r"(encoder|decoder)\.(.*)$", name)
    if not m:
        return name
    side, rest = m[1], m[2]
    rest = re.sub(r"^norm_out", "conv_norm_out", rest)
    rest = re.sub(r"^mid\.block_(\d+)", lambda x: f"mid_block.resnets.{int(x[1]) - 1}", rest)
    a = re.match(r"^mid\.attn_1\.(.*)$", rest)
    if a:
        back = {v: k for k, v in _VAE_ATTN.items()}
        rest = "mid_block.attentions.0." + _rename_prefix(a[1], back)
    rest = re.sub(r"^down\.(\d+)\.block\.", r"down_blocks.\1.resnets.", rest)
    rest = re.sub(r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.", rest)

    def up(x: re.Match) -> str:
        index = blocks - 1 - int(x[1])
        kind = "resnets." if x[2] == "block" else "upsamplers.0."
        return f"up_blocks.{index}.{kind}"

    rest = re.sub(r"^up\.(\d+)\.(block|upsample)\.", up, rest)
    return f"{side}.{rest}"


def _rename_prefix(name: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return name


def is_vae_attention_matrix(ldm_name: str) -> bool:
    """LDM stores the VAE's mid attention q/k/v/proj_out as 1x1 convs, diffusers as Linear."""
    return bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_name))


# --- text encoders ---------------------------------------------------------------------------


def te1_to_sgm(name: str) -> str:
    """HF CLIPTextModel key (with or without transformers 5's dropped `text_model.`) -> SGM."""
    return name if name.startswith("text_model.") else "text_model." + name


_TE2_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_TE2_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
}


def te2_module_to_openclip(path: str) -> tuple[str, int | None]:
    """A bigG Linear's module path -> (OpenCLIP weight name, q/k/v block or None).

    `text_model.encoder.layers.3.self_attn.k_proj` -> (`transformer.resblocks.3.attn.in_proj_weight`,
    1): q, k and v are the three row blocks of the fused `in_proj_weight`."""
    m = re.match(r"(?:text_model\.)?encoder\.layers\.(\d+)\.(.*)$", path)
    if not m:
        raise KeyError(f"`{path}` is not a layer of the bigG text encoder")
    layer, module = m[1], m[2]
    qkv = re.match(r"self_attn\.(q|k|v)_proj$", module)
    if qkv:
        return f"transformer.resblocks.{layer}.attn.in_proj_weight", "qkv".index(qkv[1])
    if module not in _TE2_LAYER:
        raise KeyError(f"`{path}` is not a layer of the bigG text encoder")
    return f"transformer.resblocks.{layer}.{_TE2_LAYER[module]}.weight", None


def te2_state_to_openclip(state: Mapping) -> dict:
    """CLIPTextModelWithProjection state dict -> OpenCLIP names (q/k/v fused, projection
    transposed: OpenCLIP computes `x @ text_projection`, HF `Linear(x)` = `x @ W.T`)."""
    import torch

    out: dict = {}
    fused: dict[tuple[int, str], dict[str, object]] = {}
    for key, value in state.items():
        key = te1_to_sgm(key) if not key.startswith("text_projection") else key
        if key in _TE2_FIXED:
            out[_TE2_FIXED[key]] = value.t().contiguous() if key.startswith("text_proj") else value
            continue
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)$", key)
        if not m:
            continue  # position_ids and other buffers are not part of the layout
        layer, module, kind = int(m[1]), m[2], m[3]
        qkv = re.match(r"self_attn\.(q|k|v)_proj$", module)
        if qkv:
            fused.setdefault((layer, kind), {})[qkv[1]] = value
            continue
        out[f"transformer.resblocks.{layer}.{_TE2_LAYER[module]}.{kind}"] = value
    for (layer, kind), parts in fused.items():
        stacked = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = stacked
    return out


def te2_state_from_openclip(state: Mapping) -> dict:
    """Inverse of `te2_state_to_openclip`; ignores OpenCLIP-only keys (logit_scale, attn_mask)."""
    back_fixed = {v: k for k, v in _TE2_FIXED.items()}
    back_layer = {v: k for k, v in _TE2_LAYER.items()}
    out: dict = {}
    for key, value in state.items():
        if key in back_fixed:
            new = back_fixed[key]
            out[new] = value.t().contiguous() if key == "text_projection" else value
            continue
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)\.(weight|bias)$", key)
        if m and m[2] in back_layer:
            out[f"text_model.encoder.layers.{m[1]}.{back_layer[m[2]]}.{m[3]}"] = value
            continue
        m = re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key)
        if m:
            for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                name = f"text_model.encoder.layers.{m[1]}.self_attn.{part}_proj.{m[2]}"
                out[name] = chunk.contiguous()
    return out
