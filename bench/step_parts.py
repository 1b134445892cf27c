"""Where a CPU training step of the tiny model goes: the UNet's forward and backward with and
without LoRA (peft's layers and the trainer's fused ones), and each optimizer's step, measured in
one process (one torch thread).

    .venv/bin/python bench/step_parts.py [--steps 40]

Why it exists: issue 14 asks `lorafile train` at its defaults to take <= 0.45x the time of
diffusers' example script per step on this model. The rows show the floor any LoRA trainer
pays in eager PyTorch: the bare UNet's forward and its backward down to the input (a LoRA's
gradient needs the backward through every block below its first adapted layer), next to the
example's whole step (`bench/train_cpu.py --diff 20,80 --example ...`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RANK = 4


def timed(fn, steps: int, warmup: int = 5) -> float:
    """Milliseconds of process CPU time per call, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    start = time.process_time()
    for _ in range(steps):
        fn()
    return (time.process_time() - start) / steps * 1000


def unet_inputs():
    import torch

    from lorafile.runtime.models.tiny import TINY_UNET_CONFIG

    latents = torch.randn(1, TINY_UNET_CONFIG["in_channels"], 8, 8)
    embeds = torch.randn(1, 77, TINY_UNET_CONFIG["cross_attention_dim"])
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])  # size, crop, target
    added = {"text_embeds": torch.randn(1, 64), "time_ids": time_ids}
    return latents, torch.tensor([500]), embeds, added


def measure(steps: int) -> list[tuple[str, float]]:
    import bitsandbytes as bnb
    import torch

    from lorafile.runtime.models.tiny import build_tiny_sdxl
    from lorafile.runtime.train import fused_lora
    from lorafile.runtime.train.adapters import peft_config
    from lorafile.runtime.train.optim import build_optimizer

    torch.set_num_threads(1)
    unet = build_tiny_sdxl(0).unet.requires_grad_(False)
    latents, t, embeds, added = unet_inputs()

    def loss():
        return unet(latents, t, embeds, added_cond_kwargs=added).sample.float().pow(2).mean()

    rows = []
    with torch.no_grad():
        rows.append(("UNet forward, no LoRA, no grad", timed(loss, steps)))
    latents.requires_grad_(True)  # the backward runs to the input, as a LoRA's does
    rows.append(("UNet forward + backward, no LoRA", timed(lambda: loss().backward(), steps)))
    latents.requires_grad_(False)
    adapter = {"algo": "lora", "rank": RANK, "alpha": RANK, "conv_rank": RANK,
               "conv_alpha": RANK, "targets": ["attention", "ff"], "dropout": 0.0}  # fmt: skip
    unet.add_adapter(peft_config(adapter))
    params = [p for p in unet.parameters() if p.requires_grad]
    with torch.no_grad():
        rows.append(("forward, LoRA attention+ff, no grad", timed(loss, steps)))
    rows.append(("forward + backward, LoRA attention+ff", timed(lambda: loss().backward(), steps)))
    fused_lora.fuse(unet)  # the trainer's layers (runtime/train/fused_lora.py)
    fused = timed(lambda: loss().backward(), steps)
    rows.append(("forward + backward, LoRA attention+ff, fused", fused))
    optimizers = {
        "bitsandbytes AdamW8bit": bnb.optim.AdamW8bit(params, lr=1e-4),
        # lorafile's adamw8bit: the same bitsandbytes step over flat buffers (optim.py); the
        # parameters become views into them, which the optimizers below step just the same.
        "bitsandbytes AdamW8bit, flat": build_optimizer(
            "adamw8bit", [{"params": params, "lr": 1e-4}], {}
        ),
        "torch AdamW, per-tensor loop": torch.optim.AdamW(params, lr=1e-4, foreach=False),
        "torch AdamW, foreach": torch.optim.AdamW(params, lr=1e-4, foreach=True),
        "torch AdamW, fused": torch.optim.AdamW(params, lr=1e-4, fused=True),
    }
    for name, opt in optimizers.items():
        rows.append((f"optimizer step: {name} ({len(params)} tensors)", timed(opt.step, steps)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="timed calls per row")
    args = p.parse_args(argv)
    rows = measure(args.steps)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"bench/step_parts.py --steps {args.steps}  ({stamp}, tiny model, 64 px, 1 thread)")
    base = rows[1][1]
    for name, ms in rows:
        print(f"{name:<58} {ms:8.2f} ms  {ms / base:5.2f}x the bare forward + backward")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
