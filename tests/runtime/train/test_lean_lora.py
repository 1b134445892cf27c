"""bench/lora_layers.py's lean LoRA forward: exact against peft's, and the adapter keeps its
names. It was not adopted (not faster on the CPU, docs/performance.md); this keeps the
measurement honest for the GPU run (`bench/gpu.sh --lora-layers`)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_lean_forward_is_exact_and_keeps_the_adapter_names(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import lora_layers

    from lorafile.runtime.train.adapters import adapter_state

    torch.manual_seed(0)
    unet, params, latents, cond, device = lora_layers.setup(gpu=False)
    names = sorted(adapter_state(unet))
    assert lora_layers.exact(unet, params, latents, cond, device)
    lora_layers.use_lean(unet, True)
    assert sorted(adapter_state(unet)) == names and len(names) > 0
    lora_layers.use_lean(unet, False)
    assert not any("forward" in m.__dict__ for m in lora_layers.lora_linears(unet))
