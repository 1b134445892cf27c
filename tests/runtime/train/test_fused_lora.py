"""The fused LoRA linear (runtime/train/fused_lora.py): peft's output bit for bit, peft's
gradients up to rounding order, peft's names, peft's own forward for every state it does not
fuse, and a whole training run that ends where peft's does. bench/lora_layers.py measures it."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import pytest

from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train import fused_lora
from lorafile.runtime.train.adapters import adapter_state
from lorafile.spec.models import Adapter
from train_runs import bare_recipe, short_train, train_adapter
from train_runs import one_thread as one_thread  # autouse fixture

ROOT = Path(__file__).resolve().parents[3]
RELATIVE = 1e-5
"""Gradients in fp32 differ by rounding order only (about 1e-7 of their norm here); a wrong
scale or a missing term is of the order of 1."""


def _layer_pair(bias=True, dropout=0.0, dora=False, rank=4, alpha=8):
    """(peft's model, the same model fused): one 12 -> 10 Linear named `proj`, LoRA scale 2,
    with a non-zero B so that the adapter changes the output."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(proj=torch.nn.Linear(12, 10, bias=bias)))
    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"],
                        lora_dropout=dropout, use_dora=dora)  # fmt: skip
    inject_adapter_in_model(config, model, adapter_name=fused_lora.ADAPTER)
    torch.nn.init.normal_(model.proj.lora_B[fused_lora.ADAPTER].weight, std=0.3)
    fused = copy.deepcopy(model)
    return model, fused, fused_lora.fuse(fused)


def _run(model, x):
    """(output, gradients of the input and of every trainable parameter) for a sum of squares."""
    x = x.detach().clone().requires_grad_(x.requires_grad)
    out = model(x)
    out.float().square().sum().backward()
    params = [p.grad for p in model.parameters() if p.requires_grad]
    return out.detach(), x.grad, params


def _relative(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 12), (7, 12)])
def test_fused_output_is_peft_s_and_gradients_agree(bias, shape):
    import torch

    peft_model, fused_model, count = _layer_pair(bias=bias)
    assert count == 1 and type(fused_model.proj).__name__ == "FusedLoraLinear"
    x = torch.randn(*shape, requires_grad=True)
    out, grad_x, grads = _run(peft_model, x)
    fused_out, fused_grad_x, fused_grads = _run(fused_model, x)
    assert fused_out.equal(out)
    assert _relative(fused_grad_x, grad_x) < RELATIVE
    assert len(grads) == len(fused_grads) == 2
    for mine, theirs in zip(fused_grads, grads, strict=True):
        assert _relative(mine, theirs) < RELATIVE


def test_an_input_without_gradient_still_trains_the_adapter():
    import torch

    peft_model, fused_model, _ = _layer_pair()
    x = torch.randn(3, 12)  # e.g. the text embeddings cross-attention's to_k reads
    _, _, grads = _run(peft_model, x)
    _, grad_x, fused_grads = _run(fused_model, x)
    assert grad_x is None
    for mine, theirs in zip(fused_grads, grads, strict=True):
        assert _relative(mine, theirs) < RELATIVE


def test_under_autocast_it_computes_in_the_autocast_dtype_as_peft_does():
    import torch

    peft_model, fused_model, _ = _layer_pair()
    x = torch.randn(2, 5, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _, grads = _run(peft_model, x)
        fused_out, _, fused_grads = _run(fused_model, x)
    assert out.dtype == fused_out.dtype == torch.bfloat16
    assert _relative(fused_out, out) < 1e-2
    for mine, theirs in zip(fused_grads, grads, strict=True):
        assert mine.dtype == theirs.dtype == torch.float32  # the trained weights stay fp32
        assert _relative(mine, theirs) < 2e-2  # bf16 matmuls: rounding of about 2^-8


def test_names_and_the_state_dict_are_peft_s_and_unfuse_restores_the_class():
    import torch
    from peft.tuners.lora import layer

    peft_model, fused_model, _ = _layer_pair()
    assert list(fused_model.state_dict()) == list(peft_model.state_dict())
    assert adapter_state(fused_model).keys() == adapter_state(peft_model).keys()
    assert fused_lora.unfuse(fused_model) == 1
    assert type(fused_model.proj) is layer.Linear
    assert not hasattr(fused_model.proj, "fused_parts")
    x = torch.randn(4, 12)
    assert fused_model(x).equal(peft_model(x))


def test_a_deep_copy_of_a_fused_model_computes_what_the_original_does():
    import torch

    _, fused_model, _ = _layer_pair()
    twin = copy.deepcopy(fused_model)
    assert twin.proj.fused_parts[0] is twin.proj.base_layer  # not the original's layer
    x = torch.randn(4, 12)
    assert twin(x).equal(fused_model(x))


def test_what_is_not_fused_keeps_peft_s_forward():
    import torch

    assert _layer_pair(dora=True)[2] == 0  # DoRA has a forward of its own
    peft_model, fused_model, count = _layer_pair(dropout=0.5)
    assert count == 1  # fused, but dropout takes peft's forward call by call
    x = torch.randn(4, 12)
    torch.manual_seed(3)
    expected = peft_model(x)
    torch.manual_seed(3)
    assert fused_model(x).equal(expected)

    peft_model, fused_model, _ = _layer_pair()
    fused_model.proj.enable_adapters(False)  # a base-model sample: the base layer alone
    assert fused_model(x).equal(fused_model.proj.base_layer(x))


def test_a_trained_base_weight_gets_its_gradient_from_peft_s_forward():
    import torch

    peft_model, fused_model, _ = _layer_pair()
    for model in (peft_model, fused_model):
        model.proj.base_layer.weight.requires_grad_(True)  # e.g. a whole trained text encoder
    x = torch.randn(4, 12)
    _, _, grads = _run(peft_model, x)
    _, _, fused_grads = _run(fused_model, x)
    assert len(fused_grads) == 3 and fused_model.proj.base_layer.weight.grad is not None
    assert all(a.equal(b) for a, b in zip(fused_grads, grads, strict=True))


def test_an_fp8_base_is_fused_as_fp8_py_computes_it():
    import torch

    from lorafile.runtime.train import fp8

    peft_model, fused_model, _ = _layer_pair()
    for model in (peft_model, fused_model):  # as the trainer does: fp8 after the adapter
        assert fp8.store_fp8(model, torch.bfloat16) == 1
    x = torch.randn(3, 7, 12, requires_grad=True)  # 21 tokens: no activation is weight-shaped
    saved = []
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's fp8 runs under autocast
        out, grad_x, grads = _run(peft_model, x)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fused_out, fused_grad_x, fused_grads = _run(fused_model, x)
    assert fused_out.equal(out) and fused_out.dtype == torch.bfloat16
    assert _relative(fused_grad_x, grad_x) < 2e-2
    for mine, theirs in zip(fused_grads, grads, strict=True):
        assert _relative(mine, theirs) < 2e-2
    weight_shaped = [t.dtype for t in saved if t.shape == (10, 12)]
    assert weight_shaped == [torch.float8_e4m3fn]  # the fp8 weight itself, no bf16 copy


def test_the_tiny_unet_agrees_with_peft_through_the_bench(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import lora_layers

    torch.manual_seed(0)
    unet, params, latents, cond, device = lora_layers.setup(gpu=False)
    names = sorted(adapter_state(unet))
    assert lora_layers.use_fused(unet, True) == 132  # every attention and ff Linear
    assert sorted(adapter_state(unet)) == names and len(names) == 264
    assert lora_layers.use_fused(unet, False) == 132
    same_output, worst = lora_layers.compare(unet, params, latents, cond, device)
    assert same_output and worst < RELATIVE


def test_a_training_run_ends_where_peft_s_does(tiny_sdxl_dir, tmp_path, monkeypatch):
    make_dataset(tmp_path / "data", 3, seed=7)
    recipe = bare_recipe(
        tiny_sdxl_dir,
        tmp_path,
        adapter=Adapter(rank=4, alpha=2.0, text_encoder=True),  # scale 0.5, encoders too
        train=short_train(steps=3, optimizer="sgd", lr=0.5),
    )

    def train(out):
        trainer, adapter = train_adapter(recipe, out)
        fused = sum(type(m).__name__ == "FusedLoraLinear" for m in trainer.models.unet.modules())
        return fused, adapter

    fused_layers, fused_adapter = train(tmp_path / "fused")
    monkeypatch.setattr(fused_lora, "fuse", lambda model: 0)
    peft_layers, peft_adapter = train(tmp_path / "peft")
    assert fused_layers == 132 and peft_layers == 0
    assert fused_adapter.keys() == peft_adapter.keys()
    moved = [k for k in peft_adapter if "lora_up" in k and peft_adapter[k].abs().max() > 0]
    assert len(moved) > 100  # up weights start at zero: these trained
    # Rounding-order differences grow over the steps; measured: 2.5e-5 for the whole adapter,
    # 2.2e-4 for the worst tensor (against a float64 run, both layers' gradients err by 6e-6).
    whole = _relative(_flat(fused_adapter, moved), _flat(peft_adapter, moved))
    worst = max(_relative(fused_adapter[k], peft_adapter[k]) for k in moved)
    assert whole < 1e-3 and worst < 1e-2


def _flat(tensors: dict, keys: list):
    import torch

    return torch.cat([tensors[k].flatten() for k in keys])
