"""`checkpointing auto` and `cache auto`: chosen by the VRAM model, explicit settings win."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorafile.compiler import vram
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.compiler.format import format_recipe
from lorafile.compiler.parse import parse_recipe
from lorafile.runtime.train.plan import build_plan, describe_plan
from lorafile.spec import models as m

GIB = 2**30


def recipe(train=None, dataset=None, adapter=None, hardware=None) -> m.Recipe:
    return m.Recipe(
        name="t",
        base=m.Base(path="/models/sdxl.safetensors"),
        datasets=(m.Dataset(path="/nonexistent/lorafile-data", **(dataset or {})),),
        adapter=m.Adapter(**(adapter or {})),
        train=m.Train(steps=100, **(train or {})),
        hardware=m.Hardware(**(hardware or {})),
        output=m.Output(path="/out"),
    )


def without_checkpointing(r: m.Recipe) -> int:
    resolved, _ = vram.resolve_auto(r, None)  # caches chosen; checkpointing then set off
    off = resolved.model_copy(
        update={"train": resolved.train.model_copy(update={"checkpointing": False})}
    )
    return vram.estimate(off).total_bytes


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    budget=st.integers(2 * GIB, 80 * GIB),
    batch=st.sampled_from([1, 2, 4]),
    side=st.sampled_from([512, 768, 1024, 1536]),
)
def test_checkpointing_is_on_only_when_off_would_not_fit(budget, batch, side):
    r = recipe(
        train={"batch": batch}, dataset={"resolution": m.Resolution(width=side, height=side)}
    )
    resolved, choices = vram.resolve_auto(r, budget)
    off_fits = without_checkpointing(r) <= budget * (1 - vram.MARGIN)
    assert resolved.train.checkpointing is (not off_fits)
    assert choices[-1].setting == "checkpointing" and choices[-1].value is (not off_fits)
    # never on a CPU, whatever the budget
    on_cpu, _ = vram.resolve_auto(r, budget, device="cpu")
    assert on_cpu.train.checkpointing is False


@settings(max_examples=30, deadline=None, derandomize=True)
@given(budget=st.integers(1 * GIB, 80 * GIB), explicit=st.booleans())
def test_an_explicit_setting_always_wins(budget, explicit):
    r = recipe(train={"checkpointing": explicit, "cache": {"latents": False, "text": False}})
    resolved, choices = vram.resolve_auto(r, budget)
    assert resolved == r and choices == []


def test_no_budget_is_safe_on_a_gpu_and_left_to_the_trainer_otherwise():
    r = recipe()
    assert vram.resolve_auto(r, None, device="cuda")[0].train.checkpointing is True
    assert vram.resolve_auto(r, None, device=None)[0].train.checkpointing == "auto"
    assert vram.resolve_auto(r, None, device="cpu")[0].train.checkpointing is False


@pytest.mark.parametrize(
    ("dataset", "adapter", "latents", "text"),
    [
        ({}, {}, True, True),
        ({"flip": True}, {}, True, True),  # both orientations are cached: still exact
        ({"color_aug": True}, {}, False, True),
        ({"shuffle_captions": True}, {}, True, False),
        ({"caption_dropout": 0.1}, {}, True, False),
        ({}, {"text_encoder": True}, True, False),
    ],
)
def test_caches_are_on_whenever_exact(dataset, adapter, latents, text):
    resolved, choices = vram.resolve_auto(recipe(dataset=dataset, adapter=adapter), None)
    assert (resolved.train.cache.latents, resolved.train.cache.text) == (latents, text)
    assert [c.setting for c in choices][:2] == ["cache latents", "cache text"]


def test_estimate_of_an_auto_recipe_uses_its_own_hardware():
    small = recipe(hardware={"vram": 8 * 10**9})
    big = recipe(hardware={"vram": 80 * 10**9})
    # 8 GB: the step does not fit without checkpointing, so the estimate is the checkpointed one
    assert vram.estimate(small).total_bytes < without_checkpointing(small)
    assert vram.estimate(big).total_bytes == without_checkpointing(big)


@pytest.mark.parametrize(
    ("line", "latents", "text", "location"),
    [
        ("cache auto", "auto", "auto", "memory"),
        ("cache auto disk", "auto", "auto", "disk"),
        ("cache disk", "auto", "auto", "disk"),
        ("cache off", False, False, "memory"),
        ("cache latents", True, False, "memory"),
        ("cache text disk", False, True, "disk"),
    ],
)
def test_cache_statement(line, latents, text, location):
    text_in = f'recipe "c"\nbase sdxl "/m.safetensors"\ndataset "/d"\ntrain {{\n    steps 5\n    {line}\n}}\noutput "/o"\n'
    r = parse_recipe(text_in)
    assert r.train.cache == m.Cache(latents=latents, text=text, location=location)
    assert parse_recipe(format_recipe(r)) == r


def test_plan_prints_each_choice_and_its_reason():
    bag = DiagnosticBag()
    plan = build_plan(recipe(hardware={"gpu": "RTX 4090"}), bag)
    text = describe_plan(plan)
    assert "auto: cache latents auto -> on: exact" in text
    assert "auto: checkpointing auto -> off: the step without it" in text
    assert plan["memory"]["gradient_checkpointing"] is False
    assert plan["memory"]["cache_latents"] and plan["memory"]["cache_text"]
    written = build_plan(recipe(train={"checkpointing": True}, hardware={"gpu": "RTX 4090"}), bag)
    assert written["memory"]["gradient_checkpointing"] is True  # explicit wins
    assert "checkpointing auto" not in describe_plan(written)


def test_the_trainer_never_checkpoints_on_a_cpu():
    import torch

    from lorafile.runtime.train import choices
    from lorafile.runtime.train.loop import Trainer

    plan = build_plan(recipe(hardware={"vram": 4 * 10**9}), DiagnosticBag())
    assert plan["memory"]["gradient_checkpointing"] is True  # the budget needs it on a GPU
    trainer = Trainer(plan)
    trainer.device = torch.device("cpu")
    choices.choose_checkpointing(trainer)
    assert trainer.plan["memory"]["gradient_checkpointing"] is False
    assert plan["memory"]["gradient_checkpointing"] is True  # the caller's plan is not changed
