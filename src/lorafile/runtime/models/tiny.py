"""A tiny SDXL-shaped model, built offline from configs, for tests and `lorafile demo`.

Same structure as SDXL base (diffusers' own SDXL tests use this shape, see
diffusers `tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py::get_dummy_components`):
a UNet with the `text_time` added conditioning, a CLIPTextModel and a
CLIPTextModelWithProjection, an AutoencoderKL that downsamples by 8, two CLIP tokenizers, the
SDXL scheduler config. The dimension rules of the real model hold:

* cross_attention_dim = te1.hidden_size + te2.hidden_size (32 + 64 = 96; SDXL 768 + 1280)
* projection_class_embeddings_input_dim = 6 * addition_time_embed_dim + te2.projection_dim
  (6*8 + 64 = 112; SDXL 6*256 + 1280 = 2816)

The two text encoders have different widths on purpose, so a key map that confuses them fails.
Module names are a subset of real SDXL's (layers_per_block 2, first down block without
attention), so LoRA key names of the tiny model are valid SDXL names.

Tokenizers: a byte-level vocabulary (the 256 byte symbols, the same with `</w>`, then
`<|startoftext|>` and `<|endoftext|>`, 514 tokens, no merges). Any text encodes without unknown
tokens and nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from lorafile.runtime.models.sdxl import SDXLComponents, build_models, save_single_file
from lorafile.runtime.models.tokenizers import BOS_ID, EOS_ID, VOCAB_SIZE, build_tokenizers

TinySDXL = SDXLComponents


TINY_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "attention_head_dim": [2, 4],
    "transformer_layers_per_block": [1, 2],
    "use_linear_projection": True,
    "cross_attention_dim": 96,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 112,
    "norm_num_groups": 32,
}

_TEXT_COMMON = {
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 77,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,  # not 2: pool at the first EOS (transformers' CLIPTextTransformer)
    "pad_token_id": EOS_ID,
    "layer_norm_eps": 1e-5,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
TINY_TEXT_ENCODER_CONFIG = {
    **_TEXT_COMMON,
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
TINY_TEXT_ENCODER_2_CONFIG = {
    **_TEXT_COMMON,
    "hidden_size": 64,
    "intermediate_size": 128,
    "projection_dim": 64,
    "hidden_act": "gelu",
}
TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.13025,
}
TINY_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def tiny_configs() -> dict[str, dict]:
    """The configs of the tiny model's parts (copies; safe to modify)."""
    return {
        "unet": dict(TINY_UNET_CONFIG),
        "text_encoder": dict(TINY_TEXT_ENCODER_CONFIG),
        "text_encoder_2": dict(TINY_TEXT_ENCODER_2_CONFIG),
        "vae": dict(TINY_VAE_CONFIG),
        "scheduler": dict(TINY_SCHEDULER_CONFIG),
    }


def build_tiny_sdxl(seed: int = 0) -> TinySDXL:
    """Build the tiny SDXL-shaped model with weights drawn from `seed` (deterministic)."""
    import torch
    from diffusers import EulerDiscreteScheduler

    configs = tiny_configs()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        models = build_models(configs)
    finally:
        torch.random.set_rng_state(state)
    tokenizer, tokenizer_2 = build_tokenizers()
    scheduler = EulerDiscreteScheduler.from_config(configs["scheduler"])
    parts = {name: model.eval() for name, model in models.items()}
    return TinySDXL(**parts, tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler)


def save_tiny_sdxl(
    path: str | os.PathLike,
    as_single_file: bool = False,
    model: TinySDXL | None = None,
    seed: int = 0,
) -> Path:
    """Save the tiny model (built from `seed` unless `model` is given).

    `as_single_file=False`: a diffusers folder at `path` (model_index.json, unet/, vae/, ...),
    reloadable with `StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True)`.
    `as_single_file=True`: one `.safetensors` at `path` in the original SDXL layout
    (`model.diffusion_model.*`, `conditioner.embedders.0/1.*`, `first_stage_model.*`), configs
    in its metadata; `lorafile.runtime.models.sdxl.load_sdxl` reloads it.
    """
    model = model or build_tiny_sdxl(seed)
    out = Path(path)
    if as_single_file:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_single_file(model, out, tokenizer="byte-level")
    else:
        model.pipeline().save_pretrained(out, safe_serialization=True)
    return out
