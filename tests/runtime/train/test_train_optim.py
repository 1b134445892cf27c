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
