"""The step in static-buffer form (runtime/train/graphs.py) on the CPU: the same adapter as the
eager step, bit for bit; exact resume; the fallback to eager when a capture raises. Capture and
replay themselves need CUDA: tests/runtime/train/test_graph_gpu.py (marked `gpu`)."""

from __future__ import annotations

import pytest

from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train import graphs
from lorafile.spec.models import Adapter, Cache, Interval, Regularization, Save
from train_runs import assert_equal_weights, tiny_recipe, train_adapter
from train_runs import one_thread as one_thread  # autouse fixture


def _recipe(model_dir, tmp_path, cache: Cache, **train):
    if not (tmp_path / "data").exists():
        make_dataset(tmp_path / "data", 3, seed=7)
        make_dataset(tmp_path / "reg", 2, seed=8)
    reg = Regularization(path=str(tmp_path / "reg"), class_prompt="a shape", ratio=0.5, weight=0.5)
    recipe = tiny_recipe(model_dir / "tiny_sdxl.safetensors", tmp_path / "data",
                         tmp_path / "out", sample=None, save=Save(), regularization=(reg,),
                         adapter=Adapter(rank=4, dropout=0.1))  # fmt: skip
    settings = dict(steps=4, accumulate=2, cache=cache, min_snr_gamma=5.0, noise_offset=0.05)
    return recipe.model_copy(update={"train": recipe.train.model_copy(update=settings | train)})


@pytest.mark.parametrize(
    "cache",
    [Cache(latents=True, text=True), Cache(latents=False, text=False)],
    ids=["cached", "encoded-each-step"],
)
def test_static_form_trains_exactly_what_the_eager_form_trains(tiny_sdxl_dir, tmp_path, cache):
    # accumulation, regularization weights, min-SNR, noise offset, flips, two bucket shapes
    recipe = _recipe(tiny_sdxl_dir, tmp_path, cache)
    static, static_adapter = train_adapter(recipe, tmp_path / "static")
    assert static.static is not None and static.static.capture is False  # CPU: no capture
    assert len(static.static.slots) >= 1
    eager, eager_adapter = train_adapter(recipe, tmp_path / "eager", graphs=False)
    assert eager.static is None
    assert_equal_weights(static_adapter, eager_adapter)


def test_static_form_resumes_exactly(tiny_sdxl_dir, tmp_path):
    recipe = _recipe(tiny_sdxl_dir, tmp_path, Cache(latents=True, text=True))
    recipe = recipe.model_copy(update={"save": Save(every=Interval(every=2))})
    _, whole = train_adapter(recipe, tmp_path / "whole")
    train_adapter(recipe, tmp_path / "cut", stop_after=3)  # ends after the step-2 checkpoint
    _, resumed = train_adapter(
        recipe, tmp_path / "cut", resume=tmp_path / "cut" / "checkpoints" / "step-000002"
    )
    assert_equal_weights(whole, resumed)


def test_a_capture_that_raises_falls_back_to_eager_once(tiny_sdxl_dir, tmp_path, monkeypatch):
    """On this CPU build `torch.cuda.Stream()` raises inside the capture, as an op that
    cannot be captured would: one T579 line, the run goes on, and the numbers are the eager
    step's."""
    recipe = _recipe(tiny_sdxl_dir, tmp_path, Cache(latents=True, text=True))
    monkeypatch.setattr(graphs, "capture_blocker", lambda trainer: None)  # try to capture
    lines = []
    monkeypatch.setattr(graphs.StaticStep, "notice", lambda self, line: lines.append(line))
    fell_back, adapter = train_adapter(recipe, tmp_path / "fallback")
    assert fell_back.static.capture is False and len(lines) == 1
    assert lines[0].startswith("info[T579]: the ") and "runs eagerly" in lines[0]
    assert all(slot.graph is None for slot in fell_back.static.slots.values())
    _, eager = train_adapter(recipe, tmp_path / "eager", graphs=False)
    assert_equal_weights(adapter, eager)


def test_a_step_that_cannot_take_the_static_form_runs_eagerly(tiny_sdxl_dir, tmp_path, capsys):
    recipe = _recipe(tiny_sdxl_dir, tmp_path, Cache(latents=True, text=False), steps=1)
    recipe = recipe.model_copy(update={"adapter": Adapter(rank=4, text_encoder=True)})
    trainer, _ = train_adapter(recipe, tmp_path / "te")
    assert trainer.static is None
    assert (
        "info[T579]: the step runs eagerly: the text encoders are trained"
        in capsys.readouterr().out
    )


def test_graphs_flag_reaches_the_trainer_and_the_workers():
    from lorafile.cli import build_parser
    from lorafile.runtime.train import launch

    args = build_parser().parse_args(["train", "r.recipe", "--graphs", "off"])
    assert args.graphs == "off"
    worker = launch.worker_args(args)
    assert worker[worker.index("--graphs") + 1] == "off"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "r.recipe", "--graphs", "maybe"])


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: `record` keeps the step instead of
    recording kernels, `replay` runs it again and writes into the same output tensor."""

    def register_generator_state(self, generator):
        self.generator = generator

    def pool(self):
        return "pool"

    def replay(self):
        self.output.copy_(self.step())


def _fake_record(graph, pool, step):
    import torch

    graph.step, graph.output = step, torch.zeros(())  # recording computes nothing
    return graph.output


def test_capture_bookkeeping_replays_exactly_what_eager_trains(
    tiny_sdxl_dir, tmp_path, monkeypatch
):
    """The capture path with its CUDA calls faked on the CPU: warm-up iterations really run
    forward and backward (their gradients must be undone), each shape is recorded once, every
    replay reseeds the registered generator. The adapter equals the eager step's, bit for bit."""
    import contextlib
    from types import SimpleNamespace

    import torch

    recipe = _recipe(tiny_sdxl_dir, tmp_path, Cache(latents=True, text=True))
    _, eager = train_adapter(recipe, tmp_path / "eager", graphs=False)
    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(graphs, "capture_blocker", lambda trainer: None)
    monkeypatch.setattr(graphs, "record", _fake_record)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    graphed, adapter = train_adapter(recipe, tmp_path / "graphed")
    slots = graphed.static.slots.values()
    assert graphed.static.capture is True and all(isinstance(s.graph, _FakeGraph) for s in slots)
    assert all(s.graph.generator is graphed.static.generator for s in slots)
    assert graphed.static.pool == "pool"
    assert_equal_weights(adapter, eager)
