"""`lorafile plan`: a recipe file resolved and printed (no torch on this path)."""

from __future__ import annotations

import json

from PIL import Image

from lorafile.cli import main

RECIPE = """\
recipe "p"
base sdxl "model.safetensors"
dataset "data" {
    resolution 64
    buckets 64..128 step 64
    repeats 3
}
trigger "zqx"
train {
    epochs 2
    batch 2
    accumulate 2
    lr 2e-4 cosine warmup 10%
    cache off
    memory auto
}
hardware {
    vram 8GB
}
output "out"
"""


def _project(tmp_path):
    (tmp_path / "data").mkdir()
    for i in range(5):
        Image.new("RGB", (64, 64), (i, 0, 0)).save(tmp_path / "data" / f"{i}.png")
        (tmp_path / "data" / f"{i}.txt").write_text("a thing")
    (tmp_path / "p.recipe").write_text(RECIPE)
    return tmp_path / "p.recipe"


def test_plan_prints_resolved_settings(tmp_path, capsys):
    recipe = _project(tmp_path)
    assert main(["plan", str(recipe)]) == 0
    text = capsys.readouterr().out
    # 5 images x 3 repeats = 15 samples -> 8 batches of 2 -> 4 steps of 2 micro-batches, x2 epochs
    assert "steps            8 (4 per epoch, 2.0 epochs)" in text
    assert "effective 4" in text and "64x64:5" in text
    assert str(tmp_path / "data") in text  # relative paths resolve against the recipe's folder


def test_plan_json_and_memory_auto(tmp_path, capsys):
    recipe = _project(tmp_path)
    assert main(["plan", str(recipe), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["resolved"]["warmup_steps"] == 1
    assert plan["memory"]["vram_estimate_bytes"] <= 8 * 2**30  # `memory auto` fitted the budget
    assert plan["memory"]["auto_changes"]  # and says what it switched on


def test_plan_of_missing_dataset_with_epochs_fails(tmp_path, capsys):
    (tmp_path / "p.recipe").write_text(RECIPE)
    assert main(["plan", str(tmp_path / "p.recipe")]) == 1
    assert "T563" in capsys.readouterr().err
