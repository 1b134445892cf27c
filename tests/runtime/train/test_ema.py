"""EMA of the adapter weights (recipe `ema`): the decay rule and the average against a hand
computation, and a stopped-and-resumed run ending with the same average bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lorafile.runtime.train.ema import AdapterEma, ema_decay, ema_path, make_ema
from lorafile.runtime.train.interrupt import SIGNAL_AT_STEP_ENV


def test_decay_rule_by_hand():
    # k-th update: 0 first, then min(D, (1 + j) / (10 + j)) with j = k - 1 (SimpleTuner).
    assert ema_decay(0.995, 1) == 0.0
    assert ema_decay(0.995, 2) == pytest.approx(2 / 11)
    assert ema_decay(0.995, 11) == pytest.approx(11 / 20)
    assert ema_decay(0.2, 3) == 0.2  # 3/12 = 0.25 is capped at D
    assert ema_decay(0.995, 2000) == 0.995


def test_average_by_hand():
    """Weights 1, 3, -1 with D = 0.2: s1 = 1; s2 = 2/11 * 1 + 9/11 * 3 = 29/11;
    s3 = 0.2 * 29/11 + 0.8 * (-1) = -3/11."""
    weight = torch.nn.Parameter(torch.tensor([1.0, 10.0]))
    ema = AdapterEma([weight], decay=0.2)
    for value, by_hand in ((1.0, 1.0), (3.0, 29 / 11), (-1.0, -3 / 11)):
        with torch.no_grad():
            weight.copy_(torch.tensor([value, 10 * value]))
        ema.update()
        assert ema.shadow[0].tolist() == pytest.approx([by_hand, 10 * by_hand], abs=1e-6)
    assert ema.updates == 3


def test_shadow_is_fp32_and_applied_restores_the_weights():
    weight = torch.nn.Parameter(torch.tensor([0.5, -0.25], dtype=torch.bfloat16))
    ema = AdapterEma([weight], decay=0.9)
    ema.update()
    assert ema.shadow[0].dtype == torch.float32
    ema.shadow[0].fill_(7.0)
    with ema.applied():
        assert weight.tolist() == [7.0, 7.0]
    assert weight.tolist() == [0.5, -0.25]


def test_state_round_trip_and_plan_switch():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    first = AdapterEma([a], 0.5)
    first.update()
    with torch.no_grad():
        a.mul_(3)
    first.update()
    second = AdapterEma([b], 0.5)
    second.load_state_dict(first.state_dict())
    assert second.updates == 2 and torch.equal(second.shadow[0], first.shadow[0])
    assert make_ema(None, [a]) is None and make_ema({"decay": 0.9}, [a]).decay == 0.9
    from pathlib import Path

    assert ema_path(Path("/o/tiny.safetensors")) == Path("/o/tiny-ema.safetensors")


def _ema_plan(tiny_sdxl_dir, tmp_path):
    from train_runs import checkpointed_plan

    path = checkpointed_plan(tiny_sdxl_dir, tmp_path)
    plan = json.loads(path.read_text())
    plan["recipe"]["ema"] = plan["resolved"]["ema"] = {"decay": 0.9}
    return plan


def test_stopped_and_resumed_run_has_the_same_average(tiny_sdxl_dir, tmp_path, monkeypatch):
    from lorafile.runtime.train.interrupt import TrainingInterrupted
    from lorafile.runtime.train.loop import TrainOptions, train

    torch.set_num_threads(1)
    plan = _ema_plan(tiny_sdxl_dir, tmp_path)
    whole = train(plan, TrainOptions(out=tmp_path / "whole", quiet=True))
    trained, average = load_file(str(whole.adapter)), load_file(str(ema_path(whole.adapter)))
    assert trained.keys() == average.keys()
    from lorafile.runtime.lorafiles.convert import read_safetensors

    meta = read_safetensors(ema_path(whole.adapter))[1]
    assert (meta["lorafile.ema_decay"], meta["lorafile.ema_updates"]) == ("0.9", "7")
    assert any(not torch.equal(trained[k], average[k]) for k in trained if "alpha" not in k)
    assert (
        tmp_path / "whole" / "checkpoints" / "step-000006" / "tiny-step000006-ema.safetensors"
    ).exists()

    monkeypatch.setenv(SIGNAL_AT_STEP_ENV, "4")
    with pytest.raises(TrainingInterrupted):
        train(plan, TrainOptions(out=tmp_path / "stopped", quiet=True))
    monkeypatch.delenv(SIGNAL_AT_STEP_ENV)
    resumed = train(plan, TrainOptions(out=tmp_path / "stopped", resume=True, quiet=True))
    again = load_file(str(ema_path(resumed.adapter)))
    assert again.keys() == average.keys() and all(torch.equal(again[k], average[k]) for k in again)
