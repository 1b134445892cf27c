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


def _edit(plan: dict, change: str) -> dict:
    """`plan` damaged the way `change` names (a hand edit, a bad merge of two files)."""
    edited = json.loads(json.dumps(plan))
    if change == "memory":
        edited["memory"] = "x"
    elif change == "datasets":
        edited["datasets"] = [1]
    elif change == "steps":
        edited["resolved"]["steps"] = "many"
    elif change == "rank":
        edited["recipe"]["adapter"]["rank"] = "eight"
    elif change == "recipe":
        edited["recipe"] = {}
    return edited


def test_damaged_plan_json_is_r110_naming_what_is_wrong(tmp_path, capsys):
    recipe = _project(tmp_path)
    assert main(["plan", str(recipe), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    for change, says in (
        ("memory", "`memory` not a section"),
        ("datasets", "`datasets` is not a list of sections"),
        ("steps", "`resolved.steps` is not a number"),
        ("rank", "`recipe.adapter.rank` is not valid"),
        ("recipe", "`recipe.name` is not valid"),
    ):
        path = tmp_path / f"{change}.json"
        path.write_text(json.dumps(_edit(plan, change)))
        assert main(["plan", str(path)]) == 1
        err = capsys.readouterr().err
        assert "error[R110]" in err and "not a plan that lorafile wrote" in err, err
        assert says in err, err
    (tmp_path / "number.json").write_text("5")  # `in` on an int was a TypeError
    assert main(["plan", str(tmp_path / "number.json")]) == 1
    assert "Traceback" not in capsys.readouterr().err
