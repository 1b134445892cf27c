"""Random LoRA / LoCon / LoHa files on the tiny model, for the merge, combine and resize tests
(tests/runtime/lorafiles/): a peft adapter with non-zero weights on a copy of the model,
written by lorafile's exporter, and fixed inputs to compare outputs on."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from lorafile.runtime import export
from lorafile.runtime.lora_keys import COMPONENTS, peft_target_modules

CONV = r"(resnets\.\d+\.conv[12]|(down|up)samplers\.0\.conv)"


def models_of(comp) -> dict:
    return {c: getattr(comp, c) for c in COMPONENTS}


def adapted(base, seed: int = 0, algo: str = "lora", rank: int = 4, alpha: float = 8.0):
    """A copy of `base` with a random adapter on attention, ff, the 3x3 convs (LoCon at rank 2,
    alpha 3) text encoder 1 (rank 4, alpha 2) and
    text encoder 2 (rank 2, alpha 3: its q/k/v are fused in the single file); `algo="loha"`: LoHa on the UNet."""
    from peft import LoHaConfig, LoraConfig, inject_adapter_in_model

    comp = copy.deepcopy(base)
    targets = peft_target_modules(models_of(comp), ["attention", "ff", "conv", "text"])
    torch.manual_seed(seed)
    if algo == "loha":
        config = LoHaConfig(r=rank, alpha=alpha, target_modules=targets["unet"], init_weights=False)
        comp.unet.add_adapter(config)
        return comp
    unet = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets["unet"],
                      init_lora_weights=False, rank_pattern={CONV: 2}, alpha_pattern={CONV: 3})  # fmt: skip
    comp.unet.add_adapter(unet)
    te1 = LoraConfig(r=4, lora_alpha=2, target_modules=targets["text_encoder"],
                     init_lora_weights=False)  # fmt: skip
    inject_adapter_in_model(te1, comp.text_encoder)
    te2 = LoraConfig(r=2, lora_alpha=3, target_modules=targets["text_encoder_2"],
                     init_lora_weights=False)  # fmt: skip
    inject_adapter_in_model(te2, comp.text_encoder_2)
    return comp


def lora_file(base, path: Path, **kwargs) -> Path:
    """A kohya-layout file of `adapted(base, **kwargs)`."""
    comp = adapted(base, **kwargs)
    return export.save_adapter(comp, path, metadata={"ss_output_name": path.stem})


def unet_output(comp):
    """The UNet's prediction on fixed inputs (the tiny model's shapes)."""
    g = torch.Generator().manual_seed(1)
    latents, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 96, generator=g)
    cond = {"text_embeds": torch.randn(1, 64, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}  # fmt: skip
    with torch.no_grad():
        return comp.unet(latents, torch.tensor([10]), emb, added_cond_kwargs=cond).sample


def text_outputs(comp):
    """Both text encoders' penultimate hidden states on fixed tokens."""
    tokens = torch.randint(0, 512, (1, 77), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        te1 = comp.text_encoder(tokens, output_hidden_states=True).hidden_states[-2]
        te2 = comp.text_encoder_2(tokens, output_hidden_states=True).hidden_states[-2]
    return te1, te2
