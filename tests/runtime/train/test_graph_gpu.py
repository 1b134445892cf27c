"""CUDA graphs of the static-buffer step (runtime/train/graphs.py): capture, replay, resume.

Marked `gpu` (skipped without CUDA; `bench/gpu.sh --tests` runs them on the device machine).
The CPU tests in test_graph_step.py cover the same code without capture: the static form
trains bit for bit what the eager form trains, resumes exactly, and falls back on a failed
capture. What only a GPU shows is checked here.
"""

from __future__ import annotations

import functools

import pytest
import torch

from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train import graphs
from lorafile.spec.models import Cache, Interval, Save
from train_runs import tiny_recipe, train_adapter

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
train_on_cuda = functools.partial(train_adapter, device="cuda")
"""`train_adapter` on the GPU."""


def _recipe(model_dir, tmp_path, **train):
    if not (tmp_path / "data").exists():
        make_dataset(tmp_path / "data", 3, seed=5)
    recipe = tiny_recipe(model_dir / "tiny_sdxl.safetensors", tmp_path / "data",
                         tmp_path / "out", sample=None, save=Save())  # fmt: skip
    settings = dict(steps=6, accumulate=2, cache=Cache(latents=True, text=True), precision="bf16")
    return recipe.model_copy(update={"train": recipe.train.model_copy(update=settings | train)})


def _close(a: dict, b: dict, rtol=2e-3, atol=2e-5) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=rtol, atol=atol)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_each_shape_is_captured_once_and_replays_the_uncaptured_step(
    tiny_sdxl_dir, tmp_path, monkeypatch, optimizer
):
    recipe = _recipe(tiny_sdxl_dir, tmp_path, optimizer=optimizer)
    graphed, graphed_adapter = train_on_cuda(recipe, tmp_path / "graphed")
    assert graphed.static.capture is True
    assert graphed.static.slots and all(s.graph is not None for s in graphed.static.slots.values())
    monkeypatch.setattr(graphs, "capture_blocker", lambda trainer: "test: no capture")
    plain, plain_adapter = train_on_cuda(recipe, tmp_path / "plain")
    assert plain.static is not None and plain.static.capture is False
    _close(plain_adapter, graphed_adapter)


def test_graphed_run_resumes_to_the_same_adapter(tiny_sdxl_dir, tmp_path):
    recipe = _recipe(tiny_sdxl_dir, tmp_path)
    recipe = recipe.model_copy(update={"save": Save(every=Interval(every=2))})
    _, whole = train_on_cuda(recipe, tmp_path / "whole")
    train_on_cuda(recipe, tmp_path / "cut", stop_after=3)  # ends after the step-2 checkpoint
    step2 = tmp_path / "cut" / "checkpoints" / "step-000002"
    resumed_trainer, resumed = train_on_cuda(recipe, tmp_path / "cut", resume=step2)
    assert resumed_trainer.static.capture is True  # re-captured after the resume
    _close(whole, resumed, rtol=1e-5, atol=1e-7)


def test_checkpointing_is_captured_or_falls_back_without_a_crash(tiny_sdxl_dir, tmp_path, capsys):
    recipe = _recipe(tiny_sdxl_dir, tmp_path, checkpointing=True, steps=2)
    trainer, _ = train_on_cuda(recipe, tmp_path / "ckpt")
    assert trainer.plan["memory"]["gradient_checkpointing"] is True
    captured = trainer.static.capture
    assert captured or "info[T579]" in capsys.readouterr().out


def test_compiled_blocks_are_captured_inside_the_static_step(tiny_sdxl_dir, tmp_path, capsys):
    """`--compile` (the repeated blocks, inductor's Triton kernels) inside the captured step:
    captured, or a said fallback to eager; it trains what the uncompiled graphed run trains."""
    recipe = _recipe(tiny_sdxl_dir, tmp_path, optimizer="sgd", lr=0.5)  # linear in the grads
    compiled, compiled_adapter = train_on_cuda(recipe, tmp_path / "compiled", compile=True)
    assert compiled.static is not None
    captured = compiled.static.capture and all(
        s.graph is not None for s in compiled.static.slots.values()
    )
    assert captured or "info[T579]" in capsys.readouterr().out
    _, graphed_adapter = train_on_cuda(recipe, tmp_path / "graphed")
    ups = sorted(k for k in graphed_adapter if "lora_up" in k)  # zero at the start
    trained = torch.cat([compiled_adapter[k].flatten().float() for k in ups])
    reference = torch.cat([graphed_adapter[k].flatten().float() for k in ups])
    # bf16 autocast: fused kernels round differently; a wrong gradient is of the order of 1.
    assert float((trained - reference).norm()) <= 5e-2 * float(reference.norm())
