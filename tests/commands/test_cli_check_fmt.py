"""`lorafile check` and `lorafile fmt`: exit codes, text and JSON output, safe rewriting."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from lorafile.backends.load import detect_kind, load_input
from lorafile.cli import main
from lorafile.compiler.diagnostics import DiagnosticBag
from repo_paths import TESTS

FIXTURES = TESTS / "fixtures"
SHARED_STYLE = FIXTURES / "recipes" / "loose" / "watercolor_style.recipe"
CANONICAL = FIXTURES / "recipes" / "sample_full.recipe"
BAD = FIXTURES / "bad" / "many_errors.recipe"


@pytest.fixture
def recipe_copy(tmp_path):
    def copy(source: Path) -> Path:
        target = tmp_path / source.name
        shutil.copy(source, target)
        return target

    return copy


@pytest.mark.parametrize(
    ("name", "recipe_name"),
    [
        ("watercolor_style", "watercolor_v1"),
        ("character_ohwx", "ohwx_woman_v2"),
        ("ink_locon", "comic_ink_locon"),
    ],
)
def test_check_shared_recipes_prints_one_success_line(name, recipe_name, capsys):
    path = FIXTURES / "recipes" / "loose" / f"{name}.recipe"
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f'{path}: ok (recipe "{recipe_name}")\n'
    assert err == ""


def test_check_reports_every_error_and_exits_1(capsys):
    assert main(["check", str(BAD)]) == 1
    out = capsys.readouterr().out
    assert out.count("error[") == 7
    assert out.rstrip().endswith("7 errors, 0 warnings")


def test_check_json_lists_diagnostics(capsys):
    assert main(["check", str(BAD), "--format", "json"]) == 1
    items = json.loads(capsys.readouterr().out)
    assert len(items) == 7
    assert set(items[0]) == {"code", "severity", "message", "help", "file", "line", "column"}
    assert items[0]["code"] == "R202" and (items[0]["line"], items[0]["column"]) == (4, 5)


def test_check_json_of_a_valid_recipe_is_an_empty_list(capsys):
    assert main(["check", str(CANONICAL), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_check_missing_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.recipe"), "--format", "json"]) == 1
    [item] = json.loads(capsys.readouterr().out)
    assert item["code"] == "R110"


def test_check_binary_file(tmp_path, capsys):
    path = tmp_path / "x.recipe"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["check", str(path)]) == 1
    assert "not UTF-8" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("a.recipe", "", "recipe"),
        ("a.txt", 'recipe "x"\nbase sdxl "/m"\n', "recipe"),
        ("config", '{\n  "model_family": "sdxl"\n}\n', "simpletuner"),
        ("config.toml", 'model_family = "sdxl"\nmodel_type = "lora"\n', "simpletuner"),
        ("config.toml", '[model_arguments]\npretrained_model_name_or_path = "/m"\n', "kohya"),
        (
            "x.conf",
            'pretrained_model_name_or_path = "/m"\nnetwork_module = "networks.lora"\n',
            "kohya",
        ),
        ("config.env", "export MODEL_TYPE=lora\n", "simpletuner"),
        ("config.yaml", "model_type: lora\n", "simpletuner"),
    ],
)
def test_detect_kind_from_content(tmp_path, name, text, kind):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert detect_kind(path, DiagnosticBag()) == kind


def test_load_input_returns_recipe_and_positions():
    loaded = load_input(CANONICAL)
    assert loaded.kind == "recipe"
    assert loaded.recipe.name == "sample_full"
    assert loaded.source_map[("sample", "sampler")].line == 12


def test_fmt_prints_canonical_form(capsys):
    assert main(["fmt", str(SHARED_STYLE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# A style LoRA")
    assert "buckets" not in out  # `buckets 256..2048 step 64` is the default
    assert "# no trigger: checks for concept bleeding" in out


def test_fmt_check_exit_codes(recipe_copy, capsys):
    assert main(["fmt", "--check", str(recipe_copy(CANONICAL))]) == 0
    loose = recipe_copy(SHARED_STYLE)
    before = loose.read_text()
    assert main(["fmt", "--check", str(loose)]) == 1
    captured = capsys.readouterr()
    assert "-    buckets 256..2048 step 64" in captured.out
    assert "would reformat" in captured.err
    assert loose.read_text() == before


def test_fmt_write_rewrites_in_place_keeping_mode_and_comments(recipe_copy, capsys):
    path = recipe_copy(SHARED_STYLE)
    path.chmod(0o640)
    assert main(["fmt", "--write", str(path)]) == 0
    text = path.read_text()
    assert "# no trigger" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert main(["fmt", "--check", str(path)]) == 0
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_fmt_write_never_touches_a_bad_recipe(recipe_copy, capsys):
    path = recipe_copy(BAD)
    before = path.read_bytes()
    assert main(["fmt", "--write", str(path)]) == 1
    assert "error[R202]" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_fmt_write_is_atomic_when_the_rename_fails(recipe_copy, monkeypatch, capsys):
    path = recipe_copy(SHARED_STYLE)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    assert main(["fmt", "--write", str(path)]) == 1  # F730, not a traceback
    assert "F730" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_fmt_refuses_trainer_configs(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text('pretrained_model_name_or_path = "/m"\n', encoding="utf-8")
    assert main(["fmt", "--write", str(path)]) == 1
    assert "lorafile import" in capsys.readouterr().err
    assert path.read_text() == 'pretrained_model_name_or_path = "/m"\n'


def test_fmt_prints_the_recipe_a_kohya_config_means(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text(
        'pretrained_model_name_or_path = "/m.safetensors"\ntrain_data_dir = "/d"\n'
        'max_train_steps = 700\nnetwork_module = "networks.lora"\nnetwork_dim = 8\n'
        'network_train_unet_only = true\noutput_dir = "/out"\nresolution = "1024,1024"\n'
        "learning_rate = 1e-4\nsdpa = true\n",
        encoding="utf-8",
    )
    assert main(["fmt", str(path)]) == 0
    out, err = capsys.readouterr()
    assert 'base sdxl "/m.safetensors"' in out
    assert "steps 700" in out and "rank 8" in out
    assert "lorafile import kohya" in err
    assert main(["fmt", "--check", str(path)]) == 1
    assert "lorafile import kohya" in capsys.readouterr().err


def test_help_documents_check_and_fmt(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "check" in out and "fmt" in out
    for command in ("check", "fmt"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--format" in capsys.readouterr().out or command == "fmt"


def test_fmt_write_through_a_symlink_keeps_the_link(recipe_copy, tmp_path):
    target = recipe_copy(SHARED_STYLE)
    link = tmp_path / "link.recipe"
    link.symlink_to(target)
    assert main(["fmt", "--write", str(link)]) == 0
    assert link.is_symlink()
    assert main(["fmt", "--check", str(target)]) == 0


def test_fmt_reads_stdin(monkeypatch, capsys):
    import io

    from lorafile.compiler.format import format_source

    text = SHARED_STYLE.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["fmt", "-"]) == 0
    out = capsys.readouterr().out
    assert out == format_source(text)
    assert "# no trigger" in out and "buckets" not in out
