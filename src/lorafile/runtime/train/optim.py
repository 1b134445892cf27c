"""Optimizers and learning-rate schedules for the native trainer.

Each optimizer comes from the package that defines it; a missing package is a clear error that
names it. Memory notes (reference/vram_perf.md §5): AdamW keeps 8 bytes of state per trainable
parameter, AdamW8bit 2 (bitsandbytes; tensors under 4096 elements stay 32-bit; runs on CPU from
bitsandbytes 0.50), Adafactor about none (factored second moment), Lion 4, Prodigy ~16.
bitsandbytes' 8-bit optimizers step flat buffers of the trainable tensors, bit for bit the
per-tensor result in one call instead of one per tensor (`flat_bitsandbytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

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
            if can_flatten(groups):
                return flat_bitsandbytes(cls, groups, args)
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


BNB_BLOCK = 256
"""bitsandbytes' 8-bit optimizers quantise their state in blocks of this many elements, each
with its own absolute maximum (`optimizer_update_8bit_blockwise`)."""
BNB_MIN_8BIT_SIZE = 4096
"""bitsandbytes keeps 32-bit state for a tensor with fewer elements (its `min_8bit_size`)."""


def can_flatten(groups: list[dict]) -> bool:
    """Whether every trainable tensor can be a view into one flat buffer per group: one dtype
    and one device, all of them contiguous leaf parameters."""
    params = [p for group in groups for p in group["params"]]
    return (
        bool(params)
        and len({(p.dtype, p.device) for p in params}) == 1
        and all(p.is_leaf and p.is_contiguous() for p in params)
    )


def flat_bitsandbytes(cls, groups: list[dict], args: dict):
    """bitsandbytes' 8-bit optimizer `cls` stepping each group's tensors as one flat tensor.

    bitsandbytes steps one tensor per call, with about 45 microseconds of Python each: 12.7 ms
    a step for the tiny model's 264 LoRA tensors on a CPU, an estimated 65 ms for SDXL's 1,444
    on a GPU, where it runs outside the captured step. Here every trainable tensor becomes a
    view into one buffer (and its gradient a view into another), so one call steps them all.

    The result is the same, bit for bit (tests/runtime/train/test_train_optim.py): tensors of
    `min_8bit_size` elements or more share an 8-bit buffer in which each tensor starts on a
    fresh 256-element block, so every block holds the same elements as in a per-tensor step
    (the zero padding changes no block's absolute maximum, and stays zero); smaller tensors
    share a 32-bit buffer, whose update is element by element. What differs: a tensor the
    forward never uses steps with a zero gradient instead of being skipped, so weight decay
    shrinks it (with trained text encoders: the first encoder's last layer, which SDXL does
    not read), and the optimizer's state in a checkpoint is per buffer."""
    min_8bit = int(args.get("min_8bit_size", BNB_MIN_8BIT_SIZE))
    flat_groups, layout, first = [], [], 0
    for group_index, group in enumerate(groups):
        numbered = list(enumerate(group["params"], start=first))  # state_dict's numbering
        first += len(numbered)
        for bits, align in ((8, BNB_BLOCK), (32, 1)):
            members = [(i, p) for i, p in numbered if (p.numel() >= min_8bit) == (bits == 8)]
            if members:
                flat = flatten_parameters([p for _, p in members], align)
                flat_groups.append({**group, "params": [flat], "state_bits": bits})
                spans = [(i, p.numel(), _span(p.numel(), align)) for i, p in members]
                layout.append(FlatBuffer(group_index, bits, spans))
    optimizer = _flat_class(cls)(flat_groups, **args)
    optimizer.layout = layout
    return optimizer


@dataclass(frozen=True)
class FlatBuffer:
    """Which tensors one flat buffer holds: the index of their parameter group as the trainer
    built it, the state's bits, and per tensor (its number in a per-tensor state_dict, its
    elements, its span in the buffer)."""

    group: int
    bits: int
    tensors: list[tuple[int, int, int]]


def _span(elements: int, align: int) -> int:
    return -(-elements // align) * align


def flatten_parameters(params: list, align: int):
    """One parameter whose data and gradient hold `params`' data and gradients: each of them
    becomes a view into it (`p.data`, `p.grad`), starting at a multiple of `align` elements.
    Autograd then accumulates every gradient into the flat gradient in place."""
    import torch

    spans = [_span(p.numel(), align) for p in params]
    data = torch.zeros(sum(spans), dtype=params[0].dtype, device=params[0].device)
    grad = torch.zeros_like(data)
    offset = 0
    for p, span in zip(params, spans, strict=True):
        n = p.numel()
        data[offset : offset + n].copy_(p.detach().reshape(-1))
        if p.grad is not None:
            grad[offset : offset + n].copy_(p.grad.reshape(-1))
        p.data = data[offset : offset + n].view_as(p)
        p.grad = grad[offset : offset + n].view_as(p)
        offset += span
    flat = torch.nn.Parameter(data)
    flat.grad = grad
    return flat


def _flat_class(cls):
    """`cls` with a group's `state_bits` 32 honoured, and `zero_grad` zeroing the flat
    gradients in place (setting them to None would cut them from the views autograd fills)."""

    class Flat(cls):
        def get_config(self, gindex, pindex, group):
            config = super().get_config(gindex, pindex, group)
            if group.get("state_bits") == 32:
                config["optim_bits"] = 32
            return config

        def zero_grad(self, set_to_none: bool = True) -> None:
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad.zero_()

    Flat.__name__ = Flat.__qualname__ = f"Flat{cls.__name__}"
    return Flat


QUANT_STATE = "__bnb_optimizer_quant_state__"
"""Where bitsandbytes' `state_dict` keeps a tensor's moments (state1/state2), their absolute
maxima per block and quantisation maps."""


def is_per_tensor_state(saved: dict) -> bool:
    """Whether an optimizer state_dict is bitsandbytes' own, one entry per tensor (a checkpoint
    of lorafile before the flat step): flat groups carry `state_bits`."""
    return not all("state_bits" in group for group in saved["param_groups"])


def flat_state_from_per_tensor(saved: dict, optimizer) -> dict:
    """A per-tensor bitsandbytes state_dict laid out as `optimizer`'s flat buffers, so a run
    checkpointed before the flat step resumes exactly: moments and block maxima are
    concatenated in buffer order, the padding holding the code of zero. A tensor with no
    state yet (bitsandbytes skips a tensor without a gradient) gets zero moments; the buffer
    takes the largest step count of its tensors."""
    states, new_state, new_groups = saved["state"], {}, []
    for index, buffer in enumerate(optimizer.layout):
        new_groups.append({**saved["param_groups"][buffer.group], "params": [index],
                           "state_bits": buffer.bits})  # fmt: skip
        entries = [states.get(number) for number, _, _ in buffer.tensors]
        present = [e for e in entries if e is not None]
        if present:
            quant = _concatenate_moments(entries, buffer)
            new_state[index] = {"step": max(e["step"] for e in present), QUANT_STATE: quant}
    return {"state": new_state, "param_groups": new_groups}


def flat_scheduler_state(saved: dict, optimizer, groups: int) -> dict:
    """A learning-rate scheduler's state_dict for the per-tensor optimizer's `groups` groups
    (base and last learning rates, lambdas) repeated for each flat buffer of a group."""

    def per_buffer(value):
        if isinstance(value, list) and len(value) == groups:
            return [value[buffer.group] for buffer in optimizer.layout]
        return value

    return {key: per_buffer(value) for key, value in saved.items()}


def _concatenate_moments(entries: list, buffer: FlatBuffer) -> dict:
    import torch

    template = next(e[QUANT_STATE] for e in entries if e is not None)
    unknown = set(template) - {"state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2"}
    if unknown:
        raise ValueError(f"bitsandbytes state keys lorafile cannot lay out flat: {unknown}")
    out = {k: v for k, v in template.items() if k.startswith("qmap")}
    for key in ("state1", "state2"):
        if key not in template:
            continue
        like, qmap = template[key], template.get("qmap" + key[-1])
        zero = 0 if qmap is None else int(qmap.abs().argmin())  # the code that means 0.0
        parts = []
        for entry, (_, elements, span) in zip(entries, buffer.tensors, strict=True):
            part = torch.full((span,), zero, dtype=like.dtype)
            if entry is not None:
                part[:elements] = entry[QUANT_STATE][key].reshape(-1).to(like.dtype)
            parts.append(part)
        out[key] = torch.cat(parts)
    for key in ("absmax1", "absmax2"):
        if key in template:
            out[key] = torch.cat([
                torch.zeros(span // BNB_BLOCK) if entry is None else entry[QUANT_STATE][key]
                for entry, (_, _, span) in zip(entries, buffer.tensors, strict=True)
            ])  # fmt: skip
    return out


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
