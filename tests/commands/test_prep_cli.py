"""`lorafile prep` from the command line, and the dataset line `lorafile lint` prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorafile.cli import main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "runtime" / "dataprep"))
from prep_planted import TRIGGER, clean_set, plant_images, tree_digest  # noqa: E402

RECIPE = """recipe "harbour"
base sdxl "/models/sd_xl_base_1.0.safetensors"
dataset "data" {{
    kind style
    captions txt
    resolution {resolution}
}}
trigger "{trigger}"
train {{
    steps 300
    batch 2
}}
output "/output/harbour"
"""


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "data"
    clean_set(folder, count=4)
    plant_images(folder)
    return folder


def test_json_output_and_exit_status(dataset, capsys):
    assert main(["prep", str(dataset), "--trigger", TRIGGER, "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    kinds = {p["kind"] for i in data["images"] for p in i["problems"]}
    assert {"corrupt", "duplicate", "near_duplicate", "exif_rotated"} <= kinds
    assert data["dataset"]["trigger"] == TRIGGER and data["summary"]["errors"] == 4


def test_a_clean_folder_exits_0(tmp_path, capsys):
    clean_set(tmp_path, count=3)
    assert main(["prep", str(tmp_path), "--trigger", TRIGGER]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"prep `{tmp_path}`") and "no problems found" in out


def test_fix_from_the_command_line_leaves_the_source_alone(dataset, tmp_path, capsys):
    before = tree_digest(dataset)
    out = tmp_path / "clean"
    assert main(["prep", str(dataset), "--fix", str(out)]) == 1  # the source has corrupt files
    text = capsys.readouterr().out
    assert f"fix: wrote a cleaned copy to `{out}`" in text and "left out" in text
    assert tree_digest(dataset) == before
    assert main(["prep", str(out)]) == 0
    capsys.readouterr()
    assert main(["prep", str(dataset), "--fix", str(out)]) == 1
    assert "error[D831]" in capsys.readouterr().err
    assert tree_digest(dataset) == before


def test_missing_folder_is_a_diagnostic(tmp_path, capsys):
    assert main(["prep", str(tmp_path / "nope")]) == 1
    assert "error[D830]" in capsys.readouterr().err


def test_recipe_gives_trigger_resolution_batch_and_kind(tmp_path, capsys):
    clean_set(tmp_path / "data", count=3, trigger="other")
    recipe = tmp_path / "harbour.recipe"
    recipe.write_text(RECIPE.format(resolution=1536, trigger=TRIGGER))
    assert main(["prep", str(tmp_path / "data"), "--recipe", str(recipe), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dataset"]["resolution"] == [1536, 1536] and data["dataset"]["batch"] == 2
    problems = [p for i in data["images"] for p in i["problems"]]
    # 640x576 is under half of 1536; no no_trigger: the trainer prepends the recipe's trigger
    assert {p["kind"] for p in problems} == {"too_small"}
    assert "under 768 px" in problems[0]["message"]
    assert [p["kind"] for p in data["problems"]] == ["image_count"]


def test_lint_prints_a_dataset_line_without_importing_pillow_or_torch(tmp_path):
    clean_set(tmp_path / "data", count=3)
    (tmp_path / "data" / "clean_02.txt").unlink()
    recipe = tmp_path / "harbour.recipe"
    recipe.write_text(RECIPE.format(resolution=1024, trigger=TRIGGER))
    probe = (
        "import sys; from lorafile.cli import main; main(['lint', sys.argv[1]]); "
        "heavy = [m for m in ('torch', 'PIL', 'numpy') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    env_path = str(ROOT / "src")
    result = subprocess.run(
        [sys.executable, "-c", probe, str(recipe)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("dataset `data`"))
    assert "3 images, 2 with a .txt caption, 1 without" in line
    assert f"lorafile prep {tmp_path / 'data'} --recipe {recipe}" in line
