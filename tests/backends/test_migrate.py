"""`lorafile migrate`: kohya <-> SimpleTuner with a report of every change and loss."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lorafile.backends import migrate as mg
from lorafile.backends.base import get
from lorafile.cli import main
from lorafile.compiler.diagnostics import DiagnosticBag
from repo_paths import TESTS
from snapshot import assert_snapshot_folder

HERE = TESTS
SHARED_INPUTS = HERE / "fixtures" / "simpletuner" / "_shared"
ST_FIXTURES = HERE / "fixtures" / "simpletuner"
GOLDEN = HERE / "golden" / "migrate"


@pytest.fixture
def seed(tmp_path, monkeypatch):
    """The seed article's kohya config, run from its folder so paths in the report are short."""
    shutil.copy(SHARED_INPUTS / "seed_style_lora.toml", tmp_path / "seed_style_lora.toml")
    monkeypatch.chdir(tmp_path)
    return Path("seed_style_lora.toml")


def test_losses_block_the_migration(seed, capsys):
    code = main(["migrate", str(seed), "--to", "simpletuner", "-o", "out"])
    captured = capsys.readouterr()
    assert code == 1
    assert not Path("out").exists()
    assert "--allow-lossy" in captured.err
    assert "sdpa" in captured.out  # the kohya-only setting is named with its reason


def test_seed_config_migrates_to_golden_files(seed, capsys):
    code = main(
        [
            "migrate",
            str(seed),
            "--to",
            "simpletuner",
            "-o",
            "out",
            "--allow-lossy",
            "--report",
            "report.md",
        ]
    )
    assert code == 0
    files = {p.name: p.read_text() for p in sorted(Path("out").iterdir())}
    files["report.md"] = Path("report.md").read_text()
    files["stdout.txt"] = capsys.readouterr().out
    folder = GOLDEN / "seed_style_lora_to_simpletuner"
    assert_snapshot_folder(folder, files)
    assert os.access("out/train.sh", os.X_OK)


def test_report_lists_meaning_changes_and_losses(seed):
    report, _recipe, files, _ = mg.migrate(seed, "simpletuner")
    codes = {d.code for d in report.changes}
    assert {"T521", "T539"} <= codes  # default VAE, always-cached latents
    assert report.lossy and any("sdpa" in loss for loss in report.losses)
    fields = {row.field: row for row in report.rows}
    assert fields["train.lr"].target_key == "learning_rate"
    assert fields["datasets[0].repeats"].source_key == "num_repeats (N)"
    markdown = mg.render(report, markdown=True)
    assert "| recipe field |" in markdown and "## Losses" in markdown
    config = json.loads(files["config.json"])
    assert (config["max_train_steps"], config["learning_rate"]) == (3000, 1e-4)


def test_format_toml(seed):
    assert (
        main(
            [
                "migrate",
                str(seed),
                "--to",
                "simpletuner",
                "-o",
                "out",
                "--allow-lossy",
                "--format",
                "toml",
            ]
        )
        == 0
    )
    assert Path("out/config.toml").is_file() and not Path("out/config.json").exists()


@pytest.mark.parametrize(
    "name",
    ["regularisation_subject", "lycoris_locon_conv", "env_trainer_extra_args", "several_datasets"],
)
def test_simpletuner_to_kohya(name, tmp_path, capsys):
    out = tmp_path / "kohya"
    code = main(
        [
            "migrate",
            str(ST_FIXTURES / name),
            "--to",
            "kohya",
            "-o",
            str(out),
            "--allow-lossy",
            "--report",
            str(tmp_path / "r.md"),
        ]
    )
    assert code == 0
    assert (out / "config.toml").is_file()
    source = get("simpletuner").read(ST_FIXTURES / name, DiagnosticBag())
    back = get("kohya").read(out / "config.toml", DiagnosticBag())
    assert back.train == get("kohya").project(source).train
    assert "Migration report: SimpleTuner -> kohya sd-scripts" in capsys.readouterr().out


def test_round_trip_through_simpletuner_keeps_the_common_settings(seed, tmp_path):
    assert main(["migrate", str(seed), "--to", "simpletuner", "-o", "st", "--allow-lossy"]) == 0
    assert main(["migrate", "st", "--to", "kohya", "-o", "back", "--allow-lossy"]) == 0
    first = get("kohya").read(seed, DiagnosticBag())
    final = get("kohya").read(Path("back/config.toml"), DiagnosticBag())
    assert (final.train.steps, final.train.lr, final.adapter.rank) == (
        first.train.steps,
        first.train.lr,
        first.adapter.rank,
    )


def test_migrating_to_the_same_trainer_is_refused(seed, capsys):
    assert main(["migrate", str(seed), "--to", "kohya", "-o", "out"]) == 1
    assert "I655" in capsys.readouterr().err


def test_a_recipe_is_compiled_not_migrated(tmp_path, capsys):
    recipe = tmp_path / "r.recipe"
    recipe.write_text((SHARED_INPUTS / "watercolor_style.recipe").read_text())
    assert main(["migrate", str(recipe), "--to", "simpletuner", "-o", str(tmp_path / "o")]) == 1
    assert "lorafile compile" in capsys.readouterr().err


def test_kohya_target_is_toml_only(capsys):
    code = main(["migrate", str(ST_FIXTURES / "json_plain_keys"), "--to", "kohya", "-o", "x",
                 "--format", "json"])  # fmt: skip
    assert code == 1 and "T519" in capsys.readouterr().err
