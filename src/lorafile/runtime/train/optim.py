"""Optimizers and learning-rate schedules for the native trainer.

Each optimizer comes from the package that defines it; a missing package is a clear error that
names it. Memory notes (reference/vram_perf.md §5): AdamW keeps 8 bytes of state per trainable
parameter, AdamW8bit 2 (bitsandbytes; tensors under 4096 elements stay 32-bit; runs on CPU from
bitsandbytes 0.50), Adafactor about none (factored second moment), Lion 4, Prodigy ~16.
"""

from __future__ import annotations

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.environment import choice_needs_package

PACKAGES = {
    "adamw8bit": "bitsandbytes",
    "lion8bit": "bitsandbytes",
    "adafactor": "transformers",
    "prodigy": "prodigyopt",
    "lion": "lion-pytorch",
}


def _missing(name: str, err: ImportError) -> DiagnosticError:
    return choice_needs_package("T570", "optimizer", name, PACKAGES[name], "adamw", str(err))


def build_optimizer(name: str, groups: list[dict], args: dict):
    """The optimizer for parameter groups `[{params, lr}]`; `args` are the recipe's
    optimizer_args (weight_decay, betas as "0.9,0.999", ...)."""
    import torch

    args = {k: _parse(v) for k, v in args.items()}
    try:
        if name == "adamw":
            return torch.optim.AdamW(groups, **{**adamw_implementation(groups), **args})
        if name == "sgd":
            return torch.optim.SGD(groups, **args)
        if name in ("adamw8bit", "lion8bit"):
            import bitsandbytes as bnb

            cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.Lion8bit
            return cls(groups, **args)
        if name == "adafactor":
            from transformers.optimization import Adafactor

            # Fixed lr from the recipe, as kohya's recommended Adafactor settings do.
            defaults = {"scale_parameter": False, "relative_step": False, "warmup_init": False}
            return Adafactor(groups, **{**defaults, **args})
        if name == "prodigy":
            from prodigyopt import Prodigy

            return Prodigy(groups, **args)
        if name == "lion":
            from lion_pytorch import Lion

            return Lion(groups, **args)
    except ImportError as err:
        raise _missing(name, err) from err
    raise ValueError(f"unknown optimizer {name}")


def adamw_implementation(groups: list[dict]) -> dict:
    """torch AdamW's fastest implementation for these parameters: `fused=True` (one kernel for
    every tensor's update) when all are floating-point tensors on the CPU or CUDA, else torch's
    default. On the CPU the fused kernel took 1.0 ms a step for the tiny model's 264 LoRA
    tensors, the per-tensor loop 6.4 ms (bench/train_cpu.py, 1 thread). The recipe's
    optimizer_args `fused`/`foreach` win over this choice."""
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    # One fused kernel serves one device type: a CPU + CUDA mix keeps torch's default.
    if (
        len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and all(p.is_floating_point() for p in params)
    ):
        return {"fused": True}
    return {}


def _parse(value):
    """optimizer_args values come as recipe scalars; `betas "0.9,0.99"` becomes a tuple."""
    if isinstance(value, str) and "," in value:
        return tuple(float(v) for v in value.split(","))
    return value


def build_scheduler(optimizer, recipe_train, total_steps: int, warmup_steps: int):
    """diffusers' `get_scheduler` (the same as the example scripts), stepped once per optimizer step."""
    from diffusers.optimization import get_scheduler

    name = recipe_train.scheduler
    if name == "constant" and warmup_steps:
        name = "constant_with_warmup"  # diffusers' "constant" ignores num_warmup_steps
    kwargs = {}
    if recipe_train.scheduler == "cosine_with_restarts":
        kwargs["num_cycles"] = recipe_train.cycles or 1
    if recipe_train.scheduler == "polynomial":
        kwargs["power"] = recipe_train.power or 1.0
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
        **kwargs,
    )
