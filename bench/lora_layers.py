"""peft's LoRA Linear against a lean forward on the same module: is it exact, is it faster?

    .venv/bin/python bench/lora_layers.py [--steps 60] [--repeat 3] [--gpu]

The lean forward keeps peft's module and parameters (so adapter state-dict names and exported
files are the same by construction) and computes `base(x) + B(A(dropout(x))) * scale` with the
same torch ops, without peft's per-call bookkeeping (forward-argument checks, adapter-name
lookups, merge/disable flags, three nn.Module calls). It checks that the UNet's output and
every adapter gradient are bitwise equal, then times forward + backward of the tiny UNet
(CPU, one thread, CPU time; `--gpu`: the full SDXL UNet in bf16 on CUDA, wall time with a
sync per step) by the difference of two run lengths.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def lean_forward(self, x, *args, **kwargs):
    """peft `lora.Linear.forward` for one active vanilla LoRA adapter, with its ops only."""
    import torch.nn.functional as F

    result = self.base_layer(x, *args, **kwargs)
    out_dtype = result.dtype
    a = self.lora_A["default"].weight
    b = self.lora_B["default"].weight
    x = self._cast_input_dtype(x, a.dtype)
    result = (
        result + F.linear(F.linear(self.lora_dropout["default"](x), a), b) * self.scaling["default"]
    )
    return result.to(out_dtype)


def lora_linears(unet) -> list:
    from peft.tuners.lora import layer

    return [m for m in unet.modules() if type(m) is layer.Linear]


def use_lean(unet, on: bool) -> None:
    import types

    for module in lora_linears(unet):
        if on:
            module.forward = types.MethodType(lean_forward, module)
        elif "forward" in module.__dict__:
            del module.forward


def setup(gpu: bool):
    import gpu_train
    import torch

    from lorafile.runtime.train import adapters

    device = torch.device("cuda" if gpu else "cpu")
    unet = gpu_train.build_unet(device, torch.bfloat16 if gpu else torch.float32, tiny=not gpu)
    adapter = {"algo": "lora", "rank": 16 if gpu else 4, "alpha": 16.0 if gpu else 4.0,
               "conv_rank": 4, "conv_alpha": 4.0, "targets": ["attention", "ff"], "dropout": 0.0}  # fmt: skip
    params = adapters.attach(unet, adapter, unet=True)
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


def exact(unet, params, latents, cond, device) -> bool:
    use_lean(unet, False)
    ref_out, ref_grads = step(unet, params, latents, cond, device)
    use_lean(unet, True)
    out, grads = step(unet, params, latents, cond, device)
    use_lean(unet, False)
    return bool(out.equal(ref_out)) and all(
        a.equal(b) for a, b in zip(grads, ref_grads, strict=True)
    )


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


def per_step(unet, params, latents, cond, device, lean: bool, steps: int, repeat: int) -> float:
    use_lean(unet, lean)
    best = []
    for _ in range(repeat):
        short = seconds(unet, params, latents, cond, device, steps // 4)
        long = seconds(unet, params, latents, cond, device, steps)
        best.append((long - short) / (steps - steps // 4))
    use_lean(unet, False)
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
    same = exact(unet, params, latents, cond, device)
    run = (unet, params, latents, cond, device)
    peft_s = per_step(*run, False, args.steps, args.repeat)
    lean_s = per_step(*run, True, args.steps, args.repeat)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    where = "CUDA, SDXL UNet bf16, wall" if args.gpu else "CPU, tiny UNet, 1 thread, CPU time"
    print(f"bench/lora_layers.py --steps {args.steps} --repeat {args.repeat} ({stamp}, {where}, "
          f"{len(lora_linears(unet))} LoRA linears)")  # fmt: skip
    print(f"peft forward+backward  {peft_s * 1000:8.2f} ms/step")
    print(f"lean forward+backward  {lean_s * 1000:8.2f} ms/step  ({lean_s / peft_s:.2f}x peft)")
    print(f"exact (output and every adapter gradient bitwise equal): {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
