"""Resume: a run SIGKILLed between checkpoints and resumed ends with the same adapter, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from safetensors.torch import load_file

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train import KILL_AT_STEP_ENV, TrainOptions, train
from lorafile.spec.models import Cache, Interval, Resolution, Sample, Save, Train
from test_train import plan_for, tiny_recipe


def _train(plan_path, out, *extra, kill_at=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(KILL_AT_STEP_ENV, None)
    if kill_at is not None:
        env[KILL_AT_STEP_ENV] = str(kill_at)
    cmd = [sys.executable, "-m", "lorafile", "train", str(plan_path), "-o", str(out), "-q", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_killed_and_resumed_run_matches_uninterrupted(tiny_sdxl_dir, tmp_path):
    import pytest
    import torch

    torch.set_num_threads(1)  # the same thread count as the killed subprocess: same sums
    make_dataset(tmp_path / "data", 4, seed=4)
    recipe = tiny_recipe(
        tiny_sdxl_dir / "diffusers",
        tmp_path / "data",
        tmp_path / "unused",
        train=Train(
            steps=7,
            accumulate=2,
            lr=3e-3,
            optimizer="adamw8bit",
            precision="no",
            checkpointing=False,
            seed=11,
            cache=Cache(latents=True, text=False),
            scheduler="cosine",
        ),
        save=Save(every=Interval(every=3), layout="diffusers"),
        sample=Sample(
            every=Interval(every=2), steps=1, size=Resolution(width=64, height=64), prompts=("zqx",)
        ),
    )
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan_for(recipe)))

    plan = json.loads(plan_path.read_text())
    train(plan, TrainOptions(out=tmp_path / "whole", quiet=True))

    killed = _train(plan_path, tmp_path / "killed", kill_at=5)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == [
        "step-000003"
    ]
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "running"

    with pytest.raises(DiagnosticError, match="T571"):
        train(plan, TrainOptions(out=tmp_path / "killed", quiet=True))
    resumed = train(plan, TrainOptions(out=tmp_path / "killed", resume=True, quiet=True))
    assert resumed.steps == 7
    a = load_file(tmp_path / "whole" / "tiny.safetensors")
    b = load_file(tmp_path / "killed" / "tiny.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(a[k].equal(b[k]) for k in a), (
        "the resumed adapter differs from the uninterrupted one"
    )
    # The checkpoint's fp32 copy (what a resume loads) matches too, not only the fp16 export.
    a32 = load_file(tmp_path / "whole" / "checkpoints" / "step-000006" / "adapter.safetensors")
    b32 = load_file(tmp_path / "killed" / "checkpoints" / "step-000006" / "adapter.safetensors")
    assert all(a32[k].equal(b32[k]) for k in a32)
