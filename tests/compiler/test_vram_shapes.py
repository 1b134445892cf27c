"""The compact SDXL shape tables in compiler/vram.py against the real architectures.

Builds the SDXL UNet, both text encoders and the VAE from their configs on torch's meta device
(no weights, no download) and checks the published parameter totals and that every adaptable
Linear/Conv2d shape is in the tables with the right count.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lorafile.compiler import vram

SDXL_UNET = {
    "sample_size": 128,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def _group(name: str) -> str | None:
    if ".attn1." in name or ".attn2." in name or name.endswith(("proj_in", "proj_out")):
        return "attention"
    if ".ff." in name:
        return "ff"
    if ".resnets." in name or "samplers." in name:
        return "conv"
    return None  # conv_in, conv_out, time/add embeddings: not adapted by kohya/LyCORIS


def _table_counter(rows) -> Counter:
    out: Counter = Counter()
    for group, fan_in, fan_out, kernel, count in rows:
        out[(group, fan_in, fan_out, kernel)] += count
    return out


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET)


def test_unet_total_and_adaptable_shapes(unet):
    assert sum(p.numel() for p in unet.parameters()) == vram.UNET_PARAMS
    found: Counter = Counter()
    for name, mod in unet.named_modules():
        group = _group(name)
        if group is None:
            continue
        if isinstance(mod, torch.nn.Linear):
            found[(group, mod.in_features, mod.out_features, 1)] += 1
        elif isinstance(mod, torch.nn.Conv2d):
            found[(group, mod.in_channels, mod.out_channels, mod.kernel_size[0])] += 1
    assert found == _table_counter(vram.UNET_MODULES)


def test_text_encoders_and_vae():
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        te1 = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
            )
        )
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                projection_dim=1280,
                hidden_act="gelu",
            )
        )
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4)  # fmt: skip
    assert sum(p.numel() for p in te1.parameters()) == vram.CLIP_L_PARAMS
    assert sum(p.numel() for p in te2.parameters()) == vram.OPENCLIP_BIGG_PARAMS
    assert sum(p.numel() for p in vae.parameters()) == vram.VAE_PARAMS
    found: Counter = Counter()
    for tag, model in (("te1", te1), ("te2", te2)):
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and (".self_attn." in name or ".mlp." in name):
                found[(tag, mod.in_features, mod.out_features, 1)] += 1
    assert found == _table_counter(vram.TEXT_ENCODER_MODULES)
