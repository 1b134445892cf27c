"""Resume: a run SIGKILLed between checkpoints and resumed ends with the same adapter, bit for bit."""

from __future__ import annotations

import json

import pytest

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.train.loop import TrainOptions, train
from train_runs import assert_same_adapters, checkpointed_plan, train_cli


def test_killed_and_resumed_run_matches_uninterrupted(tiny_sdxl_dir, tmp_path):
    import torch

    torch.set_num_threads(1)  # the same thread count as the killed subprocess: same sums
    plan_path = checkpointed_plan(tiny_sdxl_dir, tmp_path)
    plan = json.loads(plan_path.read_text())
    train(plan, TrainOptions(out=tmp_path / "whole", quiet=True))

    killed = train_cli(plan_path, tmp_path / "killed", kill_at=5)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == [
        "step-000003"
    ]
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "running"

    with pytest.raises(DiagnosticError, match="T571"):
        train(plan, TrainOptions(out=tmp_path / "killed", quiet=True))
    resumed = train(plan, TrainOptions(out=tmp_path / "killed", resume=True, quiet=True))
    assert resumed.steps == 7
    assert_same_adapters(tmp_path / "whole", tmp_path / "killed", checkpoint_step=6)
