"""Helpers shared by the training tests: `tiny_recipe` (a tiny-model recipe to adjust with
keyword changes), `short_train` (the Train block of a short run), `plan_for`, `train_adapter`
(a run in this process and its adapter), `assert_equal_weights` and the autouse fixture
`one_thread`; for the
stop/resume tests one recipe with checkpoints and samples, `lorafile train` in a subprocess with
fault injection, and the bitwise comparison of two runs' adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train.interrupt import KILL_AT_STEP_ENV, SIGNAL_AT_STEP_ENV
from lorafile.runtime.train.plan import build_plan
from lorafile.spec.models import (
    Adapter,
    Base,
    Buckets,
    Cache,
    Dataset,
    Interval,
    Log,
    Output,
    Recipe,
    Resolution,
    Sample,
    Save,
    Train,
)


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread in each test of a module that imports this autouse fixture
    (`from train_runs import one_thread as one_thread`): the tiny model is faster on one
    thread, and the CI machine shares its cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def checkpointed_plan(model_dir: Path, tmp: Path, **train) -> Path:
    """plan.json of a 7-step run saving every 3 steps and sampling every 2 (the data in
    tmp/data); `train` overrides fields of the Train block."""
    make_dataset(tmp / "data", 4, seed=4)
    settings = dict(
        steps=7,
        accumulate=2,
        lr=3e-3,
        optimizer="adamw8bit",
        seed=11,
        cache=Cache(latents=True, text=False),
        scheduler="cosine",
    )
    recipe = tiny_recipe(
        model_dir / "diffusers",
        tmp / "data",
        tmp / "unused",
        train=short_train(**(settings | train)),
        save=Save(every=Interval(every=3), layout="diffusers"),
        sample=Sample(
            every=Interval(every=2), steps=1, size=Resolution(width=64, height=64), prompts=("zqx",)
        ),
    )
    path = tmp / "plan.json"
    path.write_text(json.dumps(plan_for(recipe)))
    return path


def train_cli(plan_path: Path, out: Path, *extra: str, kill_at=None, signal_at=None):
    """`lorafile train PLAN -o OUT -q` in a subprocess on one thread (the same float sums as
    a test process with torch.set_num_threads(1)); `kill_at`: SIGKILL after that step;
    `signal_at`: "STEP" (SIGINT) or "STEP:TERM" after that step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name, value in ((KILL_AT_STEP_ENV, kill_at), (SIGNAL_AT_STEP_ENV, signal_at)):
        env.pop(name, None)
        if value is not None:
            env[name] = str(value)
    cmd = [sys.executable, "-m", "lorafile", "train", str(plan_path), "-o", str(out), "-q", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def assert_same_adapters(whole: Path, other: Path, checkpoint_step: int) -> None:
    """The final adapters of two runs are bitwise equal, and so are the fp32 adapters (what a
    resume loads) of their checkpoints at `checkpoint_step`."""
    from safetensors.torch import load_file

    a = load_file(whole / "tiny.safetensors")
    b = load_file(other / "tiny.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(a[k].equal(b[k]) for k in a), (
        "the resumed adapter differs from the uninterrupted one"
    )
    name = f"step-{checkpoint_step:06d}"
    a32 = load_file(whole / "checkpoints" / name / "adapter.safetensors")
    b32 = load_file(other / "checkpoints" / name / "adapter.safetensors")
    assert a32.keys() == b32.keys() and all(a32[k].equal(b32[k]) for k in a32)


def tiny_recipe(base_path: Path, data: Path, out: Path, **changes) -> Recipe:
    fields = dict(
        name="tiny",
        base=Base(path=str(base_path)),
        datasets=(
            Dataset(
                path=str(data),
                resolution=Resolution(width=64, height=64),
                buckets=Buckets(min=64, max=128, step=32),
                flip=True,
            ),
        ),
        trigger="zqx",
        adapter=Adapter(rank=4),
        train=short_train(
            steps=8, lr=5e-3, seed=3, cache=Cache(latents=True, text=True, location="disk")
        ),
        save=Save(every=Interval(every=3), keep=2),
        sample=Sample(
            every=Interval(every=4),
            steps=2,
            size=Resolution(width=64, height=64),
            seed=5,
            prompts=("zqx, a red circle", "a red circle"),
        ),
        output=Output(path=str(out)),
        log=Log(to="tensorboard"),
    )
    return Recipe(**(fields | changes))


def bare_recipe(model_dir: Path, tmp_path: Path, **changes) -> Recipe:
    """`tiny_recipe` for the tiny model in `model_dir`, on `tmp_path/data`, into
    `tmp_path/out`, with no samples and no checkpoints; `changes` override any field."""
    data, out = tmp_path / "data", tmp_path / "out"
    fields = dict(sample=None, save=Save()) | changes
    return tiny_recipe(model_dir / "tiny_sdxl.safetensors", data, out, **fields)


def short_train(**changes) -> Train:
    """The Train block of a short run on the tiny model: 2 AdamW steps at lr 1e-3 in fp32, no
    gradient checkpointing, seed 1, latents and text cached in memory; `changes` override any
    field."""
    fields = dict(
        steps=2,
        lr=1e-3,
        optimizer="adamw",
        precision="no",
        checkpointing=False,
        seed=1,
        cache=Cache(latents=True, text=True),
    )
    return Train(**(fields | changes))


def plan_for(recipe: Recipe) -> dict:
    bag = DiagnosticBag()
    plan = build_plan(recipe, bag)
    bag.raise_if_errors()
    return plan


def train_adapter(recipe: Recipe, out: Path, stop_after: int | None = None, **options):
    """Train `recipe` in this process into `out` with TrainOptions `options`: (the trainer, its
    adapter's weights). `stop_after`: the run ends after that step (and its checkpoint)."""
    import math

    from safetensors.torch import load_file

    from lorafile.runtime.train.loop import Trainer, TrainOptions

    trainer = Trainer(plan_for(recipe), TrainOptions(out=out, quiet=True, **options)).setup()
    if stop_after is not None:
        trainer.total = stop_after
    result = trainer.train()
    assert math.isfinite(result.last_loss)
    return trainer, load_file(result.adapter)


def assert_equal_weights(a: dict, b: dict) -> None:
    """Two adapters' weights are the same tensors, bit for bit."""
    assert a.keys() == b.keys() and len(a) > 0
    different = [k for k in a if not a[k].equal(b[k])]
    assert not different, f"{len(different)} adapter tensors differ, e.g. {different[:2]}"
