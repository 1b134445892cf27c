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


@pytest.mark.parametrize(
    ("adapter", "state", "says"),
    [
        (b"garbage", None, "adapter.safetensors is not readable safetensors"),
        (None, b"garbage", "state.pt is cut short or not a state lorafile saved"),
        (None, {"epoch": 3}, "state.pt holds no training state lorafile saved"),
    ],
)
def test_damaged_checkpoint_is_t572_naming_it(tmp_path, adapter, state, says):
    """A checkpoint cut short (a copy, a disk error): --resume names it, no torch traceback."""
    import torch
    from safetensors.torch import save_file

    from lorafile.runtime.train.checkpoint import load_checkpoint

    folder = tmp_path / "step-000002"
    folder.mkdir()
    if adapter is None:
        save_file({"w": torch.zeros(2)}, str(folder / "adapter.safetensors"))
    else:
        (folder / "adapter.safetensors").write_bytes(adapter)
    if isinstance(state, bytes):
        (folder / "state.pt").write_bytes(state)
    else:
        torch.save(state or {}, folder / "state.pt")
    with pytest.raises(DiagnosticError) as err:
        load_checkpoint(folder)
    diagnostic = err.value.diagnostics[0]
    assert diagnostic.code == "T572" and says in diagnostic.message
    assert str(folder) in diagnostic.message and "--resume PATH" in diagnostic.help
