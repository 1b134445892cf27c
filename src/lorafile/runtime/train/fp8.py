"""fp8 base weights (`train { base_precision fp8 }`): stored as float8_e4m3fn, computed in bf16.

What kohya sd-scripts' `--fp8_base` does (train_network.py: `unet.to(dtype=torch.float8_e4m3fn)`,
a plain cast with no scale; autocast upcasts each weight when a layer runs), with one change
that matters for memory: kohya lets autocast make the bf16 copy of each weight, and autograd
then keeps that copy for the backward pass (the input gradient of `x @ W.T` needs W), so
without gradient checkpointing a full bf16 copy of the base lives until backward. Here each
frozen Linear / Conv2d runs through an autograd Function that saves the fp8 weight itself
(1 byte a parameter, no new memory) and upcasts it again in backward:

  Linear:  y = x @ up(W).T + b            grad_x = grad_y @ up(W)
  Conv2d:  y = conv2d(x, up(W), b)        grad_x = conv2d_input(x.shape, up(W), grad_y)

No weight or bias gradient is computed (the base is frozen), and the input x is not saved
either: a frozen layer's input gradient does not need it (a bf16 conv saves it anyway).

Converted: every `nn.Linear` and `nn.Conv2d` (exact types) whose weight is frozen and which is
not part of the adapter (peft's `lora_A` / `lora_B` layers, LoHa's `hada_*` parameters), after
the adapter is attached: peft wraps the original layer as `base_layer` and calls
`self.base_layer(x)`, so the converted layer runs inside LoRA / LoCon / LoHa unchanged.
Converting before `attach` would be wrong: peft moves each new adapter to the base layer's
dtype (`_move_adapter_to_device_of_base_layer`), which would make the adapter fp8.
Norms, biases and embeddings stay in the compute dtype (they are ~0.1 % of the bytes).

Numerics: e4m3fn has a 3-bit mantissa (relative rounding error up to 2^-4, about 3 % RMS),
max 448, smallest normal 2^-6 and subnormals down to 2^-9; SDXL's weights are mostly
1e-3..1e-1, so a plain cast keeps them normal or in the upper subnormal range (see
docs/native-trainer.md "fp8 base" for the measured error). Everything imports torch lazily.
"""

from __future__ import annotations

import functools
from typing import Any

STORAGE_DTYPE = "float8_e4m3fn"
"""kohya's default (`--fp8_dtype e4m3`): more mantissa than e5m2, enough range for weights."""

ADAPTER_TAGS = (".lora_", ".hada_", ".lokr_")
"""Module-name fragments of adapter layers (runtime/train/adapters.py `_is_adapter_param`)."""


@functools.cache
def _functions() -> tuple[type, type]:
    """The autograd Functions (Linear, Conv2d), built on first use (torch is imported lazily)."""
    import torch
    import torch.nn.functional as F

    class LinearFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, dtype):
            ctx.save_for_backward(weight)  # the fp8 parameter itself: no copy is kept
            return F.linear(x, weight.to(dtype), None if bias is None else bias.to(dtype))

        @staticmethod
        def backward(ctx, grad):
            (weight,) = ctx.saved_tensors
            grad_x = grad.matmul(weight.to(grad.dtype)) if ctx.needs_input_grad[0] else None
            return grad_x, None, None, None

    class ConvFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, dtype, stride, padding, dilation, groups):
            ctx.save_for_backward(weight)
            ctx.shape, ctx.conv = x.shape, (stride, padding, dilation, groups)
            b = None if bias is None else bias.to(dtype)
            return F.conv2d(x, weight.to(dtype), b, stride, padding, dilation, groups)

        @staticmethod
        def backward(ctx, grad):
            (weight,) = ctx.saved_tensors
            grad_x = None
            if ctx.needs_input_grad[0]:
                w = weight.to(grad.dtype)
                grad_x = torch.nn.grad.conv2d_input(ctx.shape, w, grad, *ctx.conv)
            return grad_x, None, None, None, None, None, None, None

    return LinearFn, ConvFn


@functools.cache
def _classes() -> tuple[type, type]:
    """The layer classes converted layers get (`module.__class__` is swapped in place)."""
    import torch
    from torch import nn

    LinearFn, ConvFn = _functions()

    class Fp8Linear(nn.Linear):
        """A frozen Linear whose weight is stored in fp8 and used in `compute_dtype`."""

        compute_dtype = torch.bfloat16

        def forward(self, x):
            dtype = self.compute_dtype
            return LinearFn.apply(x.to(dtype), self.weight, self.bias, dtype)

    class Fp8Conv2d(nn.Conv2d):
        """A frozen Conv2d whose weight is stored in fp8 and used in `compute_dtype`."""

        compute_dtype = torch.bfloat16

        def forward(self, x):
            dtype, args = self.compute_dtype, (self.stride, self.padding, self.dilation)
            return ConvFn.apply(x.to(dtype), self.weight, self.bias, dtype, *args, self.groups)

    return Fp8Linear, Fp8Conv2d


def fp8_layer_classes() -> tuple[type, type]:
    """(Fp8Linear, Fp8Conv2d): the classes converted layers have (for isinstance checks)."""
    return _classes()


def _convertible(name: str, module: Any) -> type | None:
    """The fp8 class for a frozen base layer, or None (adapter layers, trainable or unusual)."""
    from torch import nn

    linear, conv = _classes()
    target = {nn.Linear: linear, nn.Conv2d: conv}.get(type(module))
    if target is None or any(tag in name for tag in ADAPTER_TAGS):
        return None
    params = [p for p in (module.weight, module.bias) if p is not None]
    if any(p.requires_grad for p in params):
        return None
    if target is conv and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        return None  # conv2d_input takes numeric padding only; SDXL has none of these
    return target


def store_fp8(model: Any, compute_dtype: Any) -> int:
    """Store `model`'s frozen Linear / Conv2d weights as float8_e4m3fn (a plain cast, as
    kohya's `--fp8_base`); they compute in `compute_dtype` (bf16 or fp16). Call after the
    adapter is attached. Returns the number of layers converted.

    diffusers' `model.dtype` then reports float8 (it is the first parameter's dtype,
    `get_parameter_dtype`): callers must pass the compute dtype explicitly, as the trainer
    does (`Trainer.dtype` for the UNet's inputs and the conditioning).
    """
    import torch

    storage = getattr(torch, STORAGE_DTYPE)
    converted = 0
    for name, module in model.named_modules():
        target = _convertible(name, module)
        if target is None:
            continue
        weight = module.weight.detach().to(storage)
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
        module.__class__ = target
        module.compute_dtype = compute_dtype
        converted += 1
    return converted


def store_base_fp8(models: Any, compute_dtype: Any, encoders: bool) -> int:
    """The trainer's fp8 base (SDXLComponents after the adapters are attached): the UNet, and
    the text encoders when they stay on the device (`encoders`: text not cached), as kohya's
    `--fp8_base` casts the encoders it keeps on the GPU (train_network.py skips encoders on
    the CPU, i.e. cached ones). Cached encoders leave the device (Trainer._offload) and keep
    the compute dtype. Embeddings, norms and the VAE are not converted. Returns the layers
    converted."""
    parts = [models.unet]
    if encoders:  # frozen by adapters.attach, or whole by Trainer._attach_adapters
        parts += [models.text_encoder, models.text_encoder_2]
    return sum(store_fp8(part, compute_dtype) for part in parts)


def fp8_bytes(model: Any) -> tuple[int, int]:
    """(bytes of fp8 parameters, bytes of all parameters) of `model`, for reports and tests."""
    import torch

    storage = getattr(torch, STORAGE_DTYPE)
    fp8 = total = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        total += n
        fp8 += n if p.dtype == storage else 0
    return fp8, total
