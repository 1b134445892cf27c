"""What `lorafile train --compile` costs and saves, on the CPU: the first step (the compile) and
the steps after it, for the eager UNet, `--compile-scope blocks` (the default: each repeated
transformer block) and `--compile-scope unet` (the whole UNet), each in a fresh process with
an empty inductor cache.

    .venv/bin/python bench/compile_cpu.py [--steps 40] [--only eager,blocks,unet]
    .venv/bin/python bench/compile_cpu.py --sdxl [--side 16] [--steps 3]

The step is the LoRA training step's forward and backward (the trainer's `adapters.attach`:
rank 4 on attention and feed-forward for the tiny model; rank 16 for `--sdxl`, the full-size SDXL UNet with random
weights, fp32, `--side` x `--side` latents, 2 threads), compiled by the trainer's own
`diffusion.compile_unet`. The first step is wall time: inductor compiles in worker
processes, whose CPU time this process does not see. The steps after it are this process's
CPU time per step (the tiny model, one thread) or wall time (`--sdxl`).

Why it exists: issue 14 asks for compilation that pays ("regional compilation so compiling
SDXL takes under a minute"); the GPU figures come from `bench/gpu.sh --regional`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import children  # noqa: E402

SCOPES = ("eager", "blocks", "unet")


def build(sdxl: bool, side: int):
    """The UNet with a LoRA attached, and a function running one forward and backward."""
    import torch

    from lorafile.runtime.train.adapters import attach

    if sdxl:
        from diffusers import UNet2DConditionModel

        from lorafile.runtime.models import sdxl as sdxl_models

        unet = UNet2DConditionModel.from_config(sdxl_models.sdxl_config("unet"))
        rank, embed, pooled, pixels = 16, 2048, 1280, 8.0 * side
    else:
        from lorafile.runtime.models.tiny import TINY_UNET_CONFIG, build_tiny_sdxl

        unet = build_tiny_sdxl(0).unet
        side, rank = 8, 4
        embed, pooled = TINY_UNET_CONFIG["cross_attention_dim"], 64
        pixels = 8.0 * side
    adapter = {"algo": "lora", "rank": rank, "alpha": rank, "conv_rank": rank,
               "conv_alpha": rank, "targets": ["attention", "ff"], "dropout": 0.0}  # fmt: skip
    attach(unet, adapter)  # the trainer's layers: peft's, plain LoRA linears fused
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, side, side, generator=generator)
    embeds = torch.randn(1, 77, embed, generator=generator)
    time_ids = torch.tensor([[pixels, pixels, 0.0, 0.0, pixels, pixels]])
    added = {"text_embeds": torch.randn(1, pooled, generator=generator), "time_ids": time_ids}
    timestep = torch.tensor([500])

    def step() -> None:
        out = unet(latents, timestep, embeds, added_cond_kwargs=added).sample
        out.float().pow(2).mean().backward()

    return unet, step


def child(scope: str, sdxl: bool, side: int, steps: int) -> dict:
    """One scope in this process: the first step's wall time and the later steps' time."""
    import torch

    from lorafile.runtime.train.diffusion import compile_unet

    torch.set_num_threads(2 if sdxl else 1)
    unet, step = build(sdxl, side)
    if scope != "eager":
        compile_unet(unet, buckets=1, mode="default", scope=scope)
    start = time.time()
    step()
    first = time.time() - start
    step()  # a second step: anything the first left to do (allocations, lazy init)
    clock = time.time if sdxl else time.process_time
    start = clock()
    for _ in range(steps):
        step()
    return {"scope": scope, "first_s": first, "step_s": (clock() - start) / steps}


def run_child(scope: str, args: argparse.Namespace) -> dict:
    """One scope in a fresh process with an empty inductor cache of its own."""
    child_args = [__file__, "--child", scope, "--steps", str(args.steps), "--side", str(args.side)]
    child_args += ["--sdxl"] if args.sdxl else []
    return children.run_child(child_args, scope, threads=2 if args.sdxl else 1)


def table(rows: list[dict], sdxl: bool) -> str:
    eager = next((r for r in rows if r["scope"] == "eager"), None)
    unit = "s/step wall" if sdxl else "ms/step CPU"
    scale = 1 if sdxl else 1000
    lines = [f"{'scope':8} {'first step s':>13} {unit:>13} {'vs eager':>9}"]
    for r in rows:
        ratio = f"{r['step_s'] / eager['step_s']:.2f}x" if eager else "-"
        lines.append(f"{r['scope']:8} {r['first_s']:13.1f} {r['step_s'] * scale:13.2f} {ratio:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 40; 3 --sdxl)")
    p.add_argument("--only", default=",".join(SCOPES), help="scopes, comma-separated")
    p.add_argument("--sdxl", action="store_true", help="the full-size SDXL UNet (10 GB RAM)")
    p.add_argument("--side", type=int, default=16, help="--sdxl latent side (default 16)")
    p.add_argument("--child", choices=SCOPES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.sdxl else 40)
    if args.child:
        children.print_row(child(args.child, args.sdxl, args.side, args.steps))
        return 0
    scopes = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        p.error(f"unknown scope {unknown[0]!r}; choose from {', '.join(SCOPES)}")
    rows = [run_child(scope, args) for scope in scopes]
    print(table(rows, args.sdxl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
