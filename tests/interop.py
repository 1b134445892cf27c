"""Shared by the LoRA-file interop tests: the tiny model's outputs on fixed inputs (UNet and
both text encoders), their largest difference, and the same outputs after diffusers'
`load_lora_weights` of a file."""

from __future__ import annotations

import copy

import torch

from lorafile.runtime.lorafiles.keys import COMPONENTS

TOL = 1e-4


def _outputs(comp):
    """UNet prediction and both text encoders' outputs on fixed inputs."""
    g = torch.Generator().manual_seed(1)
    latents, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 96, generator=g)
    cond = {
        "text_embeds": torch.randn(1, 64, generator=g),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
    }
    tokens = torch.randint(0, 512, (1, 77), generator=g)
    with torch.no_grad():
        unet = comp.unet(latents, torch.tensor([10]), emb, added_cond_kwargs=cond).sample
        te1 = comp.text_encoder(tokens, output_hidden_states=True).hidden_states[-2]
        te2 = comp.text_encoder_2(tokens, output_hidden_states=True)
    return [unet, te1, te2.hidden_states[-2], te2.text_embeds]


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _models(comp):
    return {c: getattr(comp, c) for c in COMPONENTS}


def _diffusers_outputs(base, path):
    pipe = copy.deepcopy(base).pipeline()
    pipe.load_lora_weights(str(path))
    return _outputs(pipe)
