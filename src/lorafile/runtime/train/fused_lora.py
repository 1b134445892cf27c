"""A LoRA linear layer computed as one autograd node: fewer ops per step than peft's.

peft's `lora.Linear` computes `base(x) + lora_B(lora_A(dropout(x))) * scale` with three
`nn.Linear` calls, a multiply and an add, so each adapted layer puts about seven nodes in the
autograd graph (the matmul backwards with their transposes and views, the multiply, the add, the
input cast). The tiny model is dispatch-bound on a CPU, and the GPU's eager step is host-bound,
so those per-op costs are the step's time there (bench/step_parts.py, bench/lora_layers.py).

`FusedLoraLinear` keeps peft's module, parameters and state-dict names (it only swaps the class
of a peft `lora.Linear`, so adapter files are the same by construction) and computes the frozen
base layer and the adapter in one `autograd.Function`:

  forward   y = x @ W.T + bias     h = x @ A.T      out = y + (h @ B.T) * s
  backward  dh = g @ (B * s)       dB = (g.T @ h) * s      dA = dh.T @ x
            dx = g @ W + dh @ A

The forward is peft's, op for op, so its output is bitwise peft's. The backward folds the scale
into the small (out x rank) tensors instead of multiplying the (tokens x out) gradient, and sums
the base's and the adapter's input gradients itself, so the gradients differ from peft's in the
last bits (rounding order): against a float64 run both err by about 6e-6 of their norm
(tests/runtime/train/test_fused_lora.py).

Precision and memory: the adapter computes in the dtype of the base output, i.e. the autocast
dtype under autocast, as peft's matmuls do; A and B stay fp32 and autograd casts their gradients
back. Saved for the backward: x in that dtype, h, and the weights themselves (no half-precision
copies). Where x already has that dtype and layout the saved tensor is x itself, where peft saves
a copy (its input cast to the fp32 of A, then autocast's cast back). Without checkpointing the
exact simulation of the full SDXL step keeps 0.51 GiB less, 13.40 -> 12.89 GiB
(runtime/memory/simulate.py; docs/performance.md).

What is not fused keeps peft's forward: `fuse` leaves alone DoRA and the other peft variants, a
bias on B, several adapters; and a call falls back to peft's forward when the adapters are
disabled (a base-model sample) or merged, with dropout, `adapter_names` batches, a base layer
that is neither a plain `nn.Linear` nor fp8.py's, or a base that trains. An fp8 base layer
(runtime/train/fp8.py) is fused as fp8.py computes it: its fp8 weight is upcast to the compute
dtype in the forward and again in the backward, and only the fp8 weight is kept.
"""

from __future__ import annotations

import functools
from typing import Any

from lorafile.runtime.train import fp8

ADAPTER = "default"
"""The one adapter name the trainer gives peft (runtime/train/adapters.py `attach`)."""


@functools.cache
def _classes() -> tuple[type, type]:
    """(the autograd Function, the layer class), built on first use: torch and peft load lazily."""
    import torch
    import torch.nn.functional as F
    from peft.tuners.lora import layer

    fp8_linear = fp8.fp8_layer_classes()[0]

    class LoraLinearFn(torch.autograd.Function):
        """`x @ W.T + bias + ((x @ A.T) @ B.T) * scale` for a frozen W and bias; with
        `compute` (an fp8 base), W and bias are used in that dtype, as fp8.py's Linear does."""

        @staticmethod
        def forward(ctx, x, weight, bias, a, b, scale: float, compute=None):
            if compute is None:
                y = F.linear(x, weight, bias)  # under autocast, in the autocast dtype
            else:
                y = F.linear(x.to(compute), weight.to(compute), _cast(bias, compute))
            dtype = y.dtype
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            h = torch.mm(x2, a.to(dtype).t())
            delta = torch.mm(h, b.to(dtype).t()).mul_(scale)
            ctx.save_for_backward(x2, h, weight, a, b)
            ctx.scale, ctx.x_shape, ctx.x_dtype = scale, x.shape, x.dtype
            return y.add_(delta.view(y.shape))

        @staticmethod
        def backward(ctx, grad):
            x2, h, weight, a, b = ctx.saved_tensors
            dtype, scale = h.dtype, ctx.scale
            g2 = grad.reshape(-1, grad.shape[-1]).to(dtype)
            dh = torch.mm(g2, b.to(dtype) * scale)
            grad_b = torch.mm(g2.t(), h).mul_(scale)
            grad_a = torch.mm(dh.t(), x2)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.mm(g2, weight.to(dtype)).addmm_(dh, a.to(dtype))
                grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
            return grad_x, None, None, grad_a, grad_b, None, None

    class FusedLoraLinear(layer.Linear):
        """peft's `lora.Linear` with a frozen nn.Linear (or fp8) base and its one plain adapter
        computed by `LoraLinearFn`; any other state takes peft's forward."""

        def forward(self, x, *args: Any, **kwargs: Any):
            # The parts are looked up once (`fuse`): nn.Module attribute lookups are a
            # measurable share of a small layer's call.
            base, lora_a, lora_b, no_dropout = self.fused_parts
            if (
                args
                or kwargs
                or self.disable_adapters
                or self.merged
                or not no_dropout
                or type(base) not in (torch.nn.Linear, fp8_linear)
            ):
                return super().forward(x, *args, **kwargs)
            weight, bias = base.weight, base.bias
            if weight.requires_grad or (bias is not None and bias.requires_grad):
                return super().forward(x, *args, **kwargs)
            scale, compute = self.scaling[ADAPTER], getattr(base, "compute_dtype", None)
            a, b = lora_a.weight, lora_b.weight
            return LoraLinearFn.apply(x, weight, bias, a, b, scale, compute)

    return LoraLinearFn, FusedLoraLinear


def _cast(tensor, dtype):
    return None if tensor is None else tensor.to(dtype)


def fusable(module) -> bool:
    """Whether `module` is a peft `lora.Linear` whose one adapter is plain LoRA (what fuses)."""
    from peft.tuners.lora import layer

    return (
        type(module) is layer.Linear
        and list(module.active_adapters) == [ADAPTER]
        and list(module.lora_A.keys()) == [ADAPTER]
        and ADAPTER not in module.lora_variant  # DoRA and the other variants: their own forward
        and not module.lora_bias.get(ADAPTER, False)
        and not module.fan_in_fan_out
    )


def fuse(model) -> int:
    """Turn each fusable peft LoRA linear of `model` into a `FusedLoraLinear`; returns how many."""
    import torch

    fused_class = _classes()[1]
    count = 0
    for module in model.modules():
        if fusable(module):
            module.fused_parts = (
                module.base_layer,
                module.lora_A[ADAPTER],
                module.lora_B[ADAPTER],
                isinstance(module.lora_dropout[ADAPTER], torch.nn.Identity),
            )
            module.__class__ = fused_class
            count += 1
    return count


def unfuse(model) -> int:
    """Give every `FusedLoraLinear` of `model` peft's class back; returns how many."""
    from peft.tuners.lora import layer

    fused_class = _classes()[1]
    count = 0
    for module in model.modules():
        if type(module) is fused_class:
            module.__class__ = layer.Linear
            del module.fused_parts
            count += 1
    return count
