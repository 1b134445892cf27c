"""`lorafile compile --target kohya` and `lorafile import kohya`, end to end through the CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from lorafile.cli import main
from repo_paths import TESTS

FIXTURES = TESTS / "fixtures" / "kohya"
RECIPE = FIXTURES / "_shared" / "watercolor_style.recipe"


def test_compile_writes_the_files_and_keeps_others(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["compile", str(RECIPE), "--target", "kohya", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == [
        "config.toml",
        "dataset.toml",
        "sample_prompts.txt",
        "train.sh",
    ]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "train.sh").stat().st_mode & 0o111
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["optimizer_arguments"]["learning_rate"] == 1e-4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_compile_refuses_lossy_output_without_the_flag(tmp_path, capsys):
    recipe = tmp_path / "lossy.recipe"
    recipe.write_text(RECIPE.read_text().replace("sampler euler_a", "sampler unipc"))
    out = tmp_path / "out"
    assert main(["compile", str(recipe), "--target", "kohya", "-o", str(out)]) == 1
    assert "T501" in capsys.readouterr().err
    assert not out.exists()
    assert main(["compile", str(recipe), "--target", "kohya", "-o", str(out), "--allow-lossy"]) == 0
    assert "--ss dpmsolver++" in (out / "sample_prompts.txt").read_text()


def test_compile_rejects_json_for_kohya(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["compile", str(RECIPE), "--target", "kohya", "-o", str(out), "--format", "json"]
    assert main(args) == 1
    assert "T519" in capsys.readouterr().err


def test_import_prints_the_recipe_and_diagnostics(capsys):
    assert main(["import", "kohya", str(FIXTURES / "01_seed_style_lora.toml")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith('recipe "my_style_v1"')
    assert "I601" in captured.err and "01_seed_style_lora.toml:12" in captured.err


def test_import_writes_a_file_and_fails_on_errors(tmp_path, capsys):
    target = tmp_path / "broken.recipe"
    assert (
        main(["import", "kohya", str(FIXTURES / "broken" / "types.toml"), "-o", str(target)]) == 1
    )
    assert target.read_text().startswith("recipe ")
    assert "I604" in capsys.readouterr().err


def test_import_then_compile_round_trips(tmp_path):
    recipe = tmp_path / "r.recipe"
    config = FIXTURES / "07_regularization.toml"
    assert main(["import", "kohya", str(config), "-o", str(recipe)]) == 0
    assert main(["compile", str(recipe), "--target", "kohya", "-o", str(tmp_path / "k")]) == 0
    dataset = tomllib.loads((tmp_path / "k" / "dataset.toml").read_text())
    subsets = dataset["datasets"][0]["subsets"]
    assert [s.get("is_reg", False) for s in subsets] == [False, True]


def test_compile_path_does_not_import_torch(tmp_path):
    code = (
        "import sys; from lorafile.cli import main; "
        f"main(['compile', {str(RECIPE)!r}, '--target', 'kohya', '-o', {str(tmp_path)!r}]); "
        f"main(['import', 'kohya', {str(FIXTURES / '04_lycoris_locon.toml')!r}]); "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
