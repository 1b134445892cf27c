"""fp8 base weights (runtime/train/fp8.py): storage, memory saved for backward, numerics, meta
tracing, and a short fp8 training run of the native trainer on the tiny model."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from train_runs import one_thread as one_thread  # autouse fixture

ADAPTER = {
    "algo": "locon",
    "rank": 4,
    "alpha": 4.0,
    "conv_rank": 4,
    "conv_alpha": 4.0,
    "targets": ["attention", "ff", "conv"],
    "dropout": 0.0,
    "text_encoder": False,
}


def test_module_imports_without_torch():
    code = "import sys, lorafile.runtime.train.fp8; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _stack(dtype):
    """Frozen Conv2d and Linear layers (a small UNet-like path), in `dtype`."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.Flatten(2),
        nn.Linear(64, 128),
        nn.GELU(),
        nn.Linear(128, 64),
    )
    return layers.to(dtype).requires_grad_(False)


def _saved_for_backward(model, x) -> dict[str, int]:
    """Bytes autograd saves for backward: those of weight-shaped tensors, and those that are
    new memory (not the storage of a parameter, which is resident anyway)."""
    import torch

    weights = {tuple(p.shape) for p in model.parameters() if p.dim() > 1}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    out = {"weights": 0, "new": 0, "new weights": 0}

    def pack(t):
        n = t.untyped_storage().nbytes()
        new = t.untyped_storage().data_ptr() not in params
        shaped = tuple(t.shape) in weights or tuple(t.t().shape if t.dim() == 2 else ()) in weights
        out["weights"] += n if shaped else 0
        out["new"] += n if new else 0
        out["new weights"] += n if new and shaped else 0
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    y.float().sum().backward()
    return out


def _naive_upcast(model):
    """What an upcast in forward does (kohya's fp8_base under autocast, or a parametrization):
    fp8 storage, a bf16 copy made per call, which autograd then saves."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            m.weight = nn.Parameter(m.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    for m in model.modules():
        if type(m) is nn.Linear:
            m.forward = lambda x, m=m: F.linear(x, m.weight.to(torch.bfloat16), m.bias)
        elif type(m) is nn.Conv2d:
            m.forward = lambda x, m=m: m._conv_forward(x, m.weight.to(torch.bfloat16), m.bias)
    return model


def test_fp8_layers_save_the_fp8_weight_not_a_bf16_copy():
    import torch

    from lorafile.runtime.train.fp8 import store_fp8

    x = torch.randn(2, 16, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    weight_bytes = sum(p.numel() * 2 for p in _stack(torch.bfloat16).parameters() if p.dim() > 1)
    bf16 = _saved_for_backward(_stack(torch.bfloat16), x)
    naive = _saved_for_backward(_naive_upcast(_stack(torch.bfloat16)), x)
    model = _stack(torch.bfloat16)
    assert store_fp8(model, torch.bfloat16) == 4
    fp8 = _saved_for_backward(model, x)
    print(f"\nsaved for backward (bytes): bf16 {bf16}, naive fp8 {naive}, fp8 {fp8}")
    # bf16 saves its weights (the parameters themselves); fp8 saves them in half the bytes.
    assert bf16["weights"] == weight_bytes and fp8["weights"] == weight_bytes // 2
    # A naive upcast keeps a new bf16 copy of every weight until backward; the fp8 layers keep
    # no new weight-shaped tensor, and (no input saved for a frozen conv) less in all.
    assert naive["new weights"] == weight_bytes and fp8["new weights"] == 0
    assert fp8["new"] <= bf16["new"] and fp8["new"] + weight_bytes <= naive["new"]


def test_fp8_forward_and_input_gradient_equal_bf16_with_rounded_weights():
    import torch

    from lorafile.runtime.train.fp8 import store_fp8

    rounded = _stack(torch.bfloat16)
    for p in rounded.parameters():
        if p.dim() > 1:
            p.data = p.data.to(torch.float8_e4m3fn).to(torch.bfloat16)
    model = _stack(torch.bfloat16)
    store_fp8(model, torch.bfloat16)
    results = []
    for m in (rounded, model):
        x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
        x = x.to(torch.bfloat16).requires_grad_(True)
        y = m(x)
        y.float().square().sum().backward()
        results.append((y, x.grad))
    (y_ref, g_ref), (y, g) = results
    assert y.dtype == torch.bfloat16 and g.dtype == torch.bfloat16
    assert torch.equal(y, y_ref)
    assert torch.allclose(g.float(), g_ref.float(), rtol=1e-2, atol=1e-3)


def _rounding_error(w) -> float:
    import torch

    w = w.to(torch.bfloat16).float()
    return ((w.to(torch.float8_e4m3fn).float() - w).norm() / w.norm()).item()


def test_rounding_error_of_a_plain_cast():
    """A plain e4m3fn cast (kohya's --fp8_base): ~2.5 % relative error for weights of the
    tiny model's scale; SDXL-sized layers at PyTorch's default init scale fall partly into
    the subnormal range (below 2^-6) and lose more (documented in docs/native-trainer.md)."""
    import torch
    from torch import nn

    from lorafile.runtime.models.tiny import build_tiny_sdxl

    unet = build_tiny_sdxl(seed=0).unet
    ws = [m.weight for m in unet.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    err = math.sqrt(sum((_rounding_error(w) * w.norm().item()) ** 2 for w in ws)) / math.sqrt(
        sum(w.norm().item() ** 2 for w in ws)
    )
    g = torch.Generator().manual_seed(0)
    to_q = (torch.rand(1280, 1280, generator=g) * 2 - 1) / math.sqrt(1280)  # nn.Linear init
    conv = (torch.rand(320, 320, 3, 3, generator=g) * 2 - 1) / math.sqrt(320 * 9)
    errors = {"tiny": err, "to_q 1280": _rounding_error(to_q), "conv 320": _rounding_error(conv)}
    print("\nrelative error of rounding to e4m3fn:", {k: round(v, 4) for k, v in errors.items()})
    assert 0.015 < errors["tiny"] < 0.035  # the 3-bit mantissa's error on normal numbers
    assert errors["to_q 1280"] < 0.05 and errors["conv 320"] < 0.07


def _tiny_unet(algo="locon"):
    import torch

    from lorafile.runtime.models.tiny import build_tiny_sdxl
    from lorafile.runtime.train import adapters

    torch.manual_seed(0)
    unet = build_tiny_sdxl(seed=0).unet.to(torch.bfloat16)
    params = adapters.attach(unet, {**ADAPTER, "algo": algo})
    return unet, params


def _unet_step(unet):
    import torch

    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, 8, generator=g).to(torch.bfloat16)
    cond = torch.randn(1, 77, 96, generator=g).to(torch.bfloat16)
    added = {
        "text_embeds": torch.randn(1, 64, generator=g).to(torch.bfloat16),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
    }
    out = unet(x, torch.tensor([500]), cond, added_cond_kwargs=added, return_dict=False)[0]
    out.float().square().mean().backward()
    return out


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_tiny_unet_stores_its_frozen_layers_in_fp8(algo):
    import torch
    from torch import nn

    from lorafile.runtime.train.fp8 import fp8_layer_classes, store_fp8

    unet, params = _tiny_unet(algo)
    base = {
        n: m.weight.numel() * 2
        for n, m in unet.named_modules()
        if type(m) in (nn.Linear, nn.Conv2d) and ".lora_" not in n
    }
    assert store_fp8(unet, torch.bfloat16) == len(base)
    modules = dict(unet.named_modules())
    for name, nbytes in base.items():
        assert isinstance(modules[name], fp8_layer_classes())
        assert modules[name].weight.numel() * modules[name].weight.element_size() == nbytes // 2
    # The adapter is untouched: fp32 and trainable, its own layers plain nn.Linear / nn.Conv2d.
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert not any(isinstance(m, fp8_layer_classes()) for n, m in modules.items() if ".lora_" in n)
    # diffusers' `dtype` is the first parameter's (conv_in, now fp8): callers pass the compute
    # dtype instead (Trainer.dtype).
    assert unet.dtype == torch.float8_e4m3fn
    zero_init = [p for p in params if not p.detach().any()]  # peft: lora_B, LoHa's w2_b
    out = _unet_step(unet)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    # The zero-initialised factor gets a gradient in every adapted layer, the first blocks'
    # included: the gradient flowed back through the fp8 layers after them.
    wrapped = [m.base_layer for m in unet.modules() if hasattr(m, "base_layer")]
    assert len(zero_init) == len(wrapped) > 50
    assert all(isinstance(layer, fp8_layer_classes()) for layer in wrapped)
    assert all(p.grad.abs().sum() > 0 for p in zero_init)


def test_fp8_layers_trace_on_meta_under_the_cuda_autocast_emulation():
    """memsim traces the fp8 layers on the meta device inside CudaAutocast (a torch-function
    mode) and the allocation tracker (a dispatch mode): no bf16 weight copy outlives a layer's
    forward, and backward gives the input gradient in the input's dtype."""
    import torch
    from torch import nn

    from lorafile.runtime.memory.trace import (
        MemoryTracker,
        autocast_mode_class,
        dispatch_mode_class,
    )
    from lorafile.runtime.train.fp8 import store_fp8

    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Flatten(2), nn.Linear(64, 32))
    model = model.to("meta", torch.bfloat16).requires_grad_(False)
    store_fp8(model, torch.bfloat16)
    tracker = MemoryTracker()
    x = torch.empty(2, 8, 8, 8, device="meta", requires_grad=True)  # fp32, as after a norm
    with dispatch_mode_class()(tracker):
        with autocast_mode_class()(torch.bfloat16):
            y = model(x)
        copies = [t for t in tracker.live.values() if t.dtype == "bfloat16" and len(t.shape) > 2]
        kept = [t for t in copies if t.shape == tuple(model[0].weight.shape)]
        y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and y.shape == (2, 16, 32)
    assert not kept, "a bf16 copy of the conv weight is still alive after the forward"
    assert x.grad.shape == x.shape and x.grad.dtype == torch.float32
    assert tracker.peak > 0


def test_native_trainer_trains_an_fp8_base(tiny_sdxl_dir, tmp_path, capsys):
    """A short fp8 run learns (finite loss, every adapter weight moves, samples render) and
    exports the same kohya keys as a bf16 run; the fp8 layers are really in the models."""
    import torch
    from safetensors import safe_open

    from lorafile.runtime.demo import make_dataset
    from lorafile.runtime.train.fp8 import fp8_bytes
    from lorafile.runtime.train.loop import Trainer, TrainOptions
    from lorafile.spec.models import Adapter, Cache, Interval, Resolution, Sample, Save, Train
    from train_runs import plan_for, tiny_recipe

    make_dataset(tmp_path / "data", 3, seed=1)
    adapter = Adapter(algo="locon", rank=4, targets=("attention", "ff", "conv"), text_encoder=True)
    size = Resolution(width=64, height=64)
    sample = Sample(every=Interval(every=100), steps=2, size=size, prompts=("zqx",))
    keys, runs = {}, {}
    for base in ("fp8", "bf16"):
        train = Train(steps=3, lr=5e-3, optimizer="adamw", precision="bf16", base_precision=base,
                      checkpointing=False, seed=3, cache=Cache(latents=True, text=False))  # fmt: skip
        recipe = tiny_recipe(
            tiny_sdxl_dir / "tiny_sdxl.safetensors",
            tmp_path / "data",
            tmp_path / base,
            adapter=adapter,
            train=train,
            save=Save(),
            sample=sample if base == "fp8" else None,  # sampling with fp8 layers
        )
        trainer = Trainer(plan_for(recipe), TrainOptions(quiet=True)).setup()
        before = trainer.adapter_states()
        result = trainer.train()
        after = trainer.adapter_states()
        runs[base] = (trainer, result, before, after)
        with safe_open(result.adapter, "pt") as f:
            keys[base] = sorted(f.keys())
    trainer, result, before, after = runs["fp8"]
    assert "stores fp8 base weights as bf16" not in capsys.readouterr().out
    m = trainer.models
    # The UNet and the (uncached) encoders hold fp8 weights; adapters are fp32.
    assert fp8_bytes(m.unet)[0] > 0.7 * fp8_bytes(m.unet)[1]
    assert fp8_bytes(m.text_encoder)[0] > 0 and fp8_bytes(m.text_encoder_2)[0] > 0
    assert all(p.dtype == torch.float32 for p in trainer.unet_params + trainer.te_params)
    assert trainer.dtype == torch.bfloat16
    assert math.isfinite(result.last_loss)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("unet."))
    assert len(result.samples) == 1 and (result.samples[0].parent / "grid.png").is_file()
    assert keys["fp8"] == keys["bf16"] and any(k.startswith("lora_te1_") for k in keys["fp8"])
