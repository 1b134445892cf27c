"""peft's LoRA Linear against lorafile's fused one (runtime/train/fused_lora.py): how close,
how much faster?

    .venv/bin/python bench/lora_layers.py [--steps 60] [--repeat 3] [--gpu]

The fused layer keeps peft's module and parameters (so adapter state-dict names and exported
files are the same by construction) and computes the base layer and the adapter in one
autograd node. This checks that the UNet's output is bitwise peft's and how far every adapter
gradient is from peft's (rounding order only), then times forward + backward of the tiny UNet
(CPU, one thread, CPU time; `--gpu`: the full SDXL UNet in bf16 on CUDA, wall time with a sync
per step) by the difference of two run lengths, switching the same model between the two.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GRADIENT_TOLERANCE = {False: 1e-4, True: 2e-2}
"""Largest relative difference (of a tensor's norm) expected between the two layers' gradients,
on the CPU (fp32) and with `--gpu` (bf16 autocast): rounding order gives about 1e-6 in fp32 and
bf16's 2^-8 steps in bf16; a wrong gradient gives about 1."""


def use_fused(unet, on: bool) -> int:
    """Switch the UNet's plain LoRA linears to the fused layer (or back); returns how many."""
    from lorafile.runtime.train import fused_lora

    return fused_lora.fuse(unet) if on else fused_lora.unfuse(unet)


def setup(gpu: bool):
    import gpu_train
    import torch

    from lorafile.runtime.train import adapters

    device = torch.device("cuda" if gpu else "cpu")
    unet = gpu_train.build_unet(device, torch.bfloat16 if gpu else torch.float32, tiny=not gpu)
    adapter = {"algo": "lora", "rank": 16 if gpu else 4, "alpha": 16.0 if gpu else 4.0,
               "conv_rank": 4, "conv_alpha": 4.0, "targets": ["attention", "ff"], "dropout": 0.0}  # fmt: skip
    params = adapters.attach(unet, adapter, unet=True, fused=False)
    for p in params:  # a trained-looking adapter (B starts at zero)
        torch.nn.init.normal_(p, std=0.02)
    case = gpu_train.Case(1, False, 1024)
    latents, cond = gpu_train.make_inputs(unet, case, device, tiny=not gpu)
    return unet, params, latents, cond, device


def step(unet, params, latents, cond, device):
    import torch

    t = torch.full((latents.shape[0],), 500, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = unet(latents.to(unet.dtype), t, cond["embeds"].to(unet.dtype),
                   added_cond_kwargs={"text_embeds": cond["pooled"].to(unet.dtype),
                                      "time_ids": cond["time_ids"]}, return_dict=False)[0]  # fmt: skip
    out.float().square().mean().backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out.detach(), grads


def compare(unet, params, latents, cond, device) -> tuple[bool, float]:
    """(the fused output bitwise equals peft's, the largest relative gradient difference)."""
    ref_out, ref_grads = step(unet, params, latents, cond, device)
    use_fused(unet, True)
    out, grads = step(unet, params, latents, cond, device)
    use_fused(unet, False)
    worst = max(
        float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))
        for a, b in zip(grads, ref_grads, strict=True)
    )
    return bool(out.equal(ref_out)), worst


def seconds(unet, params, latents, cond, device, n: int) -> float:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    sync()
    start = clock()
    for _ in range(n):
        step(unet, params, latents, cond, device)
    sync()
    return clock() - start


def per_step(unet, params, latents, cond, device, fused: bool, steps: int, repeat: int) -> float:
    use_fused(unet, fused)
    best = []
    for _ in range(repeat):
        short = seconds(unet, params, latents, cond, device, steps // 4)
        long = seconds(unet, params, latents, cond, device, steps)
        best.append((long - short) / (steps - steps // 4))
    use_fused(unet, False)
    return min(best)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--gpu", action="store_true")
    args = p.parse_args(argv)
    if not args.gpu:
        torch.set_num_threads(1)
    unet, params, latents, cond, device = setup(args.gpu)
    step(unet, params, latents, cond, device)  # warm-up
    layers = use_fused(unet, True)
    use_fused(unet, False)
    same_output, worst = compare(unet, params, latents, cond, device)
    run = (unet, params, latents, cond, device)
    peft_s = per_step(*run, False, args.steps, args.repeat)
    fused_s = per_step(*run, True, args.steps, args.repeat)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    where = "CUDA, SDXL UNet bf16, wall" if args.gpu else "CPU, tiny UNet, 1 thread, CPU time"
    print(f"bench/lora_layers.py --steps {args.steps} --repeat {args.repeat} ({stamp}, {where}, "
          f"{layers} LoRA linears)")  # fmt: skip
    print(f"peft forward+backward   {peft_s * 1000:8.2f} ms/step")
    print(f"fused forward+backward  {fused_s * 1000:8.2f} ms/step  ({fused_s / peft_s:.2f}x peft)")
    print(f"output bitwise equal to peft's: {same_output}")
    tolerance = GRADIENT_TOLERANCE[args.gpu]
    close = "within" if worst <= tolerance else "NOT within"
    print(f"largest relative gradient difference: {worst:.2e} ({close} {tolerance:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
