"""bitsandbytes' 8-bit optimizers stepped over flat buffers (runtime/train/optim.py
`flat_bitsandbytes`): a whole run trains, bit for bit, the adapter the per-tensor step trains,
resumes exactly, and resumes exactly from a checkpoint the per-tensor step wrote (an earlier
lorafile's). The optimizer alone: test_train_optim.py."""

from __future__ import annotations

import pytest

from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train import optim
from lorafile.spec.models import Adapter, Interval, Save
from train_runs import assert_equal_weights, bare_recipe, short_train, train_adapter
from train_runs import one_thread as one_thread  # autouse fixture


@pytest.fixture
def recipe(tiny_sdxl_dir, tmp_path):
    make_dataset(tmp_path / "data", 3, seed=7)
    # Rank 44: a factor of a 64-wide layer holds 2816 elements (32-bit state), those of the
    # cross-attention and feed-forward layers 4224 to 22528 (8-bit), and 4224 is not a whole
    # number of 256-element blocks, so the 8-bit buffer has padding.
    return bare_recipe(
        tiny_sdxl_dir,
        tmp_path,
        adapter=Adapter(rank=44, dropout=0.0),
        train=short_train(steps=4, accumulate=2, optimizer="adamw8bit", lr=1e-3),
        save=Save(every=Interval(every=2)),
    )


def _per_tensor(monkeypatch):
    monkeypatch.setattr(optim, "can_flatten", lambda groups: False)


def test_a_flat_run_trains_what_the_per_tensor_run_trains(recipe, tmp_path, monkeypatch):
    flat, flat_adapter = train_adapter(recipe, tmp_path / "flat")
    buffers = flat.optimizer.optimizer.layout
    assert {b.bits for b in buffers} == {8, 32} and flat.static is not None
    _per_tensor(monkeypatch)
    per_tensor, per_tensor_adapter = train_adapter(recipe, tmp_path / "per-tensor")
    assert not hasattr(per_tensor.optimizer.optimizer, "layout")
    assert_equal_weights(flat_adapter, per_tensor_adapter)


def test_a_flat_run_resumes_exactly(recipe, tmp_path):
    _, whole = train_adapter(recipe, tmp_path / "whole")
    train_adapter(recipe, tmp_path / "cut", stop_after=3)
    step2 = tmp_path / "cut" / "checkpoints" / "step-000002"
    _, resumed = train_adapter(recipe, tmp_path / "cut", resume=step2)
    assert_equal_weights(whole, resumed)


def test_a_per_tensor_checkpoint_resumes_exactly_into_the_flat_step(recipe, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _per_tensor(patch)
        _, whole = train_adapter(recipe, tmp_path / "whole")
        train_adapter(recipe, tmp_path / "cut", stop_after=3)  # an earlier lorafile's checkpoint
    step2 = tmp_path / "cut" / "checkpoints" / "step-000002"
    resumed_trainer, resumed = train_adapter(recipe, tmp_path / "cut", resume=step2)
    assert hasattr(resumed_trainer.optimizer.optimizer, "layout")  # the flat step resumed it
    assert_equal_weights(whole, resumed)
