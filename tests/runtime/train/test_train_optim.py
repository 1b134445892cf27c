"""Optimizers and schedules of the native trainer."""

from __future__ import annotations

import sys

import pytest

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.train.optim import build_optimizer, build_scheduler
from lorafile.spec.models import Train, Warmup


def _params():
    import torch

    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(64, 80))]  # > 4096 elements: bnb keeps 8-bit state


@pytest.mark.parametrize(
    "name", ["adamw", "adamw8bit", "adafactor", "prodigy", "lion", "lion8bit", "sgd"]
)
def test_every_optimizer_takes_a_step(name):
    params = _params()
    before = params[0].detach().clone()
    opt = build_optimizer(name, [{"params": params, "lr": 1e-3}], {})
    params[0].sum().backward()
    opt.step()
    assert not params[0].detach().equal(before)


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import now raises ImportError
    with pytest.raises(DiagnosticError, match="pip install prodigyopt") as err:
        build_optimizer("prodigy", [{"params": _params(), "lr": 1.0}], {})
    found = err.value.diagnostics[0]
    assert found.code == "T570"
    assert found.message.startswith("The optimizer `prodigy` needs the package `prodigyopt`")
    assert found.help.endswith("or choose `optimizer adamw`")


def test_optimizer_args_parse_betas():
    opt = build_optimizer(
        "adamw", [{"params": _params(), "lr": 1e-3}], {"betas": "0.8,0.95", "weight_decay": 0.1}
    )
    assert opt.defaults["betas"] == (0.8, 0.95) and opt.defaults["weight_decay"] == 0.1


def test_constant_with_warmup_ramps():
    opt = build_optimizer("adamw", [{"params": _params(), "lr": 1.0}], {})
    sched = build_scheduler(opt, Train(steps=10, warmup=Warmup(value=4)), 10, 4)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


# Shapes of SDXL LoRA tensors at rank 16 (8-bit state; the first is not a whole number of
# 256-element blocks, so the next would straddle blocks without padding) and of small ones
# (32-bit state), in two groups with their own learning rates.
SHAPES = (
    [(16, 333), (16, 640), (640, 16), (4, 96), (16, 2048), (1280, 16)],
    [(300, 4), (64, 80), (3, 4)],
)


def _groups(seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "params": [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes],
            "lr": lr,
        }
        for shapes, lr in zip(SHAPES, (1e-3, 3e-4), strict=True)
    ]


@pytest.mark.parametrize("name", ["adamw8bit", "lion8bit"])
def test_the_flat_8bit_step_is_the_per_tensor_step_bit_for_bit(name):
    """One bitsandbytes call over padded flat buffers against one call per tensor."""
    import bitsandbytes as bnb
    import torch

    from lorafile.runtime.train import optim

    flat_groups, tensor_groups = _groups(0), _groups(0)
    flat = build_optimizer(name, flat_groups, {"weight_decay": 0.1})
    assert type(flat).__name__.startswith("Flat") and len(flat.param_groups) == 4
    cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.Lion8bit
    per_tensor = cls(tensor_groups, weight_decay=0.1)
    params = [p for g in flat_groups for p in g["params"]]
    reference = [p for g in tensor_groups for p in g["params"]]
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        for i, (p, q) in enumerate(zip(params, reference, strict=True)):
            # Gradients of very different sizes per tensor and step: a block that straddled
            # two tensors would take the larger one's absolute maximum.
            scale = 10.0 ** ((step + i) % 4 - 2)
            (p * torch.randn(p.shape, generator=generator) * scale).sum().backward()
            q.grad = p.grad.clone()  # autograd accumulated into the view of the flat buffer
        flat.step()
        per_tensor.step()
        flat.zero_grad()
        assert all(not p.grad.any() for p in params)  # zeroed in place, still views
    assert all(p.equal(q) for p, q in zip(params, reference, strict=True))
    flat_states = [flat.state[g["params"][0]]["state1"].dtype for g in flat.param_groups]
    assert flat_states == [torch.uint8, torch.float32] * 2  # each group: 8-bit, then 32-bit
    states = [per_tensor.state[q]["state1"].dtype for q in reference]
    assert torch.uint8 in states and torch.float32 in states  # both kinds of state were used
    assert optim.can_flatten(flat_groups)
