"""Issue 12 §2 and §5 on the compile path: each input that printed a Python traceback (or was
accepted without comment) now gets a coded diagnostic with a help line and exit status 1.

Root causes, one test (or a parametrized group) each: output folders the file system refuses
(read-only, full, a file in the way: F730/F731), `convert -o` an existing folder, kohya
`learning_rate = nan`/`inf` (I604), configs nested too deeply for the parsers (I600/I651/I634),
a kohya config that is not UTF-8 (R110), names that leave the output folder or hold a NUL
(R209/R208, I614 from kohya), a blank trigger (R206), integers TOML cannot hold (T590/T591),
paths too long to look up, missing statements without a position (R203), control characters
echoed raw by `lint`, and `inspect` calling /dev/zero or a folder "does not exist".
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from lorafile.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures"
KOHYA_CONFIG = FIXTURES / "kohya" / "01_seed_style_lora.toml"
SIMPLETUNER_FOLDER = FIXTURES / "simpletuner" / "json_plain_keys"
RECIPE = """recipe "style"
base sdxl "/models/sd_xl_base_1.0.safetensors"
dataset "/data/x" {
    kind style
}
train {
    steps 100
}
output "/out"
"""


def _run(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr+stdout of one in-process command; a traceback fails the test."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _recipe(tmp_path: Path, text: str = RECIPE, name: str = "r.recipe") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _kohya(tmp_path: Path, old: str = "", new: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(KOHYA_CONFIG.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return path


def _simpletuner(tmp_path: Path) -> Path:
    folder = tmp_path / "st"
    shutil.copytree(SIMPLETUNER_FOLDER, folder)
    return folder


# ---- output the file system refuses (F730, F731) ------------------------------------------------


def _tiny_lora(path: Path, metadata: dict[str, str] | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    from lora_factory import kohya_module

    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    tensors = kohya_module(name, torch.Generator().manual_seed(0))
    save_file(tensors, str(path), metadata=metadata)
    return path


def _writer(tmp_path: Path, out: Path, command: str) -> list:
    """A compile-path command that writes, with its output at `out`."""
    if command == "compile":
        return ["compile", _recipe(tmp_path), "-t", "kohya", "-o", out]
    if command == "import":
        return ["import", "kohya", _kohya(tmp_path), "-o", out / "r.recipe"]
    if command == "migrate":
        return ["migrate", _kohya(tmp_path), "--to", "simpletuner", "-o", out, "--allow-lossy"]
    return ["fmt", "--write", _recipe(out, RECIPE.replace("100", " 100"), "f.recipe")]


@pytest.mark.parametrize("command", ["compile", "import", "migrate", "fmt"])
@pytest.mark.parametrize(
    ("err", "code"), [(errno.EROFS, "F730"), (errno.EACCES, "F730"), (errno.ENOSPC, "F731")]
)
def test_refused_writes_are_diagnostics(tmp_path, capsys, monkeypatch, command, err, code):
    out = tmp_path / "out"
    out.mkdir()
    argv = _writer(tmp_path, out, command)
    before = sorted(p.name for p in out.iterdir())

    def refuse(*args, **kwargs):  # the first write of lorafile.files.atomic_path
        raise OSError(err, os.strerror(err), str(kwargs.get("dir", "?")))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    status, text = _run(capsys, *argv)
    assert status == 1
    assert f"error[{code}]" in text and "help:" in text and str(out) in text
    assert sorted(p.name for p in out.iterdir()) == before


def test_full_disk_at_the_flush_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("lorafile.files._fsync", full)
    status, text = _run(capsys, "compile", _recipe(tmp_path), "-t", "simpletuner", "-o", out)
    assert status == 1 and "error[F731]" in text
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", ["compile", "migrate"])
def test_an_output_folder_that_is_a_file(tmp_path, capsys, command):
    blocker = tmp_path / "blocker"
    blocker.write_text("user data", encoding="utf-8")
    status, text = _run(capsys, *_writer(tmp_path, blocker, command))
    assert status == 1 and "error[F730]" in text
    assert blocker.read_text(encoding="utf-8") == "user data"


def test_an_output_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("user data", encoding="utf-8")
    argv = ["import", "kohya", _kohya(tmp_path), "-o", blocker / "sub" / "r.recipe"]
    status, text = _run(capsys, *argv)
    assert status == 1 and "error[F730]" in text


def test_convert_to_an_existing_folder(tmp_path, capsys):
    lora = _tiny_lora(tmp_path / "in.safetensors")
    folder = tmp_path / "existing"
    folder.mkdir()
    status, text = _run(capsys, "convert", lora, "--to", "diffusers", "-o", folder)
    assert status == 1 and "error[F730]" in text and "is a folder" in text
    assert list(folder.iterdir()) == []


def test_convert_to_a_read_only_folder(tmp_path, capsys, monkeypatch):
    lora = _tiny_lora(tmp_path / "in.safetensors")

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    status, text = _run(capsys, "convert", lora, "--to", "kohya", "-o", tmp_path / "o.safetensors")
    assert status == 1 and "error[F730]" in text and "read-only" in text


# ---- kohya values and files ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
@pytest.mark.parametrize("command", ["import", "migrate"])
def test_kohya_learning_rate_not_finite(tmp_path, capsys, value, command):
    config = _kohya(tmp_path, "learning_rate = 1e-4", f"learning_rate = {value}")
    argv = {
        "import": ["import", "kohya", config],
        "migrate": ["migrate", config, "--to", "simpletuner", "-o", tmp_path / "o"],
    }[command]
    status, text = _run(capsys, *argv)
    assert status == 1
    assert "error[I604]: `learning_rate = " in text and "not a finite number" in text


def test_kohya_config_not_utf8_through_import(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_bytes(KOHYA_CONFIG.read_bytes().replace(b"my_style_v1", b"my\xe9style"))
    status, text = _run(capsys, "import", "kohya", config)
    assert status == 1 and "error[R110]" in text and "not UTF-8" in text


def _nested(kind: str, depth: int) -> str:
    if kind == "toml":
        return "a = " + "[" * depth + "]" * depth + "\n"
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_deeply_nested_kohya_configs(tmp_path, capsys, depth):
    config = tmp_path / "config.toml"
    config.write_text(_nested("toml", depth) + KOHYA_CONFIG.read_text(), encoding="utf-8")
    for argv in (["import", "kohya", config], ["check", config]):
        status, text = _run(capsys, *argv)
        assert status == 1 and "error[I600]" in text and "too deeply" in text
    dataset = tmp_path / "dataset.toml"
    dataset.write_text("[general]\n" + _nested("toml", depth), encoding="utf-8")
    status, text = _run(capsys, "import", "kohya", config, "--dataset-config", dataset)
    assert status == 1 and "error[I600]" in text


@pytest.mark.parametrize(
    ("name", "text", "code"),
    [
        ("config.json", '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}", "I651"),
        ("config.toml", "a = " + "[" * 50_000 + "]" * 50_000, "I651"),
        ("config.yaml", "a: " + "[" * 50_000 + "]" * 50_000, "I651"),
        ("multidatabackend.json", "[" * 50_000 + "]" * 50_000, "I634"),
    ],
)
def test_deeply_nested_simpletuner_files(tmp_path, capsys, name, text, code):
    folder = _simpletuner(tmp_path)
    if name != "multidatabackend.json":
        (folder / "config.json").unlink()
    (folder / name).write_text(text, encoding="utf-8")
    given = folder if name == "multidatabackend.json" else folder / name
    status, out = _run(capsys, "import", "simpletuner", given)
    assert status == 1 and f"error[{code}]" in out and "too deeply" in out


def test_simpletuner_config_env_not_utf8(tmp_path, capsys):
    env = tmp_path / "config.env"
    env.write_bytes(b"TRAINING_NUM_PROCESSES=1\nMODEL_NAME=\xff\n")
    status, text = _run(capsys, "import", "simpletuner", env)
    assert status == 1 and "error[R110]" in text


# ---- names, strings and numbers no output can hold ----------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        ('recipe "style"', 'recipe "../../etc/style"', "R209"),
        ('recipe "style"', 'recipe "a\\\\b"', "R209"),
        ('recipe "style"', 'recipe ".."', "R209"),
        ('output "/out"', 'output "/out" {\n    name "sub/x"\n}', "R209"),
        ('recipe "style"', 'recipe "st\\u0000yle"', "R208"),
        ('dataset "/data/x"', 'dataset "/data/\\u0000x"', "R208"),
        ("train {", 'trigger "   "\ntrain {', "R206"),
    ],
)
def test_names_and_strings_no_file_can_hold(tmp_path, capsys, old, new, code):
    recipe = _recipe(tmp_path, RECIPE.replace(old, new))
    status, text = _run(capsys, "check", recipe)
    assert status == 1 and f"error[{code}]" in text
    assert f"{recipe}:" in text  # located at the statement
    status, _ = _run(capsys, "compile", recipe, "-t", "kohya", "-o", tmp_path / "o")
    assert status == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("output_name", ["../../evil", "a/b", "..", "x\\u0000y"])
def test_kohya_output_name_outside_the_output_folder(tmp_path, capsys, output_name):
    config = _kohya(tmp_path, '"my_style_v1"', json.dumps(output_name).replace("\\\\", "\\"))
    for argv in (
        ["import", "kohya", config],
        ["migrate", config, "--to", "simpletuner", "-o", tmp_path / "o", "--allow-lossy"],
    ):
        status, text = _run(capsys, *argv)
        assert status == 1 and "error[I614]" in text
    assert not (tmp_path / "o").exists()


def test_integers_beyond_toml_64_bits(tmp_path, capsys):
    recipe = _recipe(tmp_path, RECIPE.replace("steps 100", "steps 9223372036854775808"))
    status, text = _run(capsys, "compile", recipe, "-t", "kohya", "-o", tmp_path / "k")
    assert status == 1 and "error[T590]" in text and not (tmp_path / "k").exists()
    argv = ["compile", recipe, "-t", "simpletuner", "--format", "toml", "-o", tmp_path / "s"]
    status, text = _run(capsys, *argv)
    assert status == 1 and "error[T591]" in text and not (tmp_path / "s").exists()
    largest = _recipe(tmp_path, RECIPE.replace("steps 100", "steps 9223372036854775807"), "ok")
    status, _ = _run(capsys, "compile", largest, "-t", "kohya", "-o", tmp_path / "k")
    assert status == 0


def test_paths_too_long_to_look_up(tmp_path, capsys):
    """ENAMETOOLONG from pathlib's is_dir/is_file (lint's image scan, the native plan)."""
    long = "x" * 5000
    text = RECIPE.replace("/data/x", f"/data/{long}").replace("/out", f"/out/{long}")
    recipe = _recipe(tmp_path, text)
    for argv in (
        ["lint", recipe],
        ["check", recipe],
        *(["compile", recipe, "-t", t, "-o", tmp_path / t] for t in ("kohya", "native")),
    ):
        status, out = _run(capsys, *argv)
        assert status in (0, 1), out


# ---- located and printable diagnostics ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (RECIPE.replace('dataset "/data/x" {\n    kind style\n}\n', ""), 1),
        ("# a comment\n\n" + RECIPE.replace('recipe "style"\n', ""), 3),
        ("# only a comment\n", 1),
    ],
)
def test_missing_statements_have_a_position(tmp_path, capsys, text, line):
    recipe = _recipe(tmp_path, text)
    status, out = _run(capsys, "check", recipe, "--format", "json")
    found = [d for d in json.loads(out[out.index("[") :]) if d["code"] == "R203"]
    assert status == 1 and found
    assert all(d["line"] == line and d["column"] == 1 for d in found)


def test_lint_escapes_control_characters(tmp_path, capsys):
    text = RECIPE.replace("train {", 'trigger "oh\\u001b[2Jwx\\r"\ntrain {')
    text = text.replace('recipe "style"', 'recipe "n\\u001b[31m"')
    recipe = _recipe(tmp_path, text)
    for argv in (["lint", recipe], ["check", recipe]):
        _, out = _run(capsys, *argv)
        assert "\x1b" not in out and "\r" not in out
    _, out = _run(capsys, "lint", recipe)
    assert "\\x1b[2J" in out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/dev/zero", "is not a regular file"),
        ("FOLDER", "is a folder"),
        ("missing.safetensors", "does not exist"),
    ],
)
def test_inspect_says_what_the_path_is(tmp_path, capsys, target, message):
    path = tmp_path if target == "FOLDER" else (tmp_path / target if "/" not in target else target)
    status, text = _run(capsys, "inspect", path)
    assert status == 1 and "error[F710]" in text and message in text


def test_numbers_past_pythons_digit_limit(tmp_path, capsys):
    """int() refuses more than 4300 digits with a ValueError that escaped as a traceback."""
    digits = "9" * 5000
    config = tmp_path / "config.toml"
    config.write_text(f"a = {digits}\n" + KOHYA_CONFIG.read_text(), encoding="utf-8")
    status, text = _run(capsys, "import", "kohya", config)
    assert status == 1 and "error[I600]" in text
    for old, new in (("steps 100", f"steps {digits}"), ("kind style", f"resolution {digits}")):
        status, text = _run(capsys, "check", _recipe(tmp_path, RECIPE.replace(old, new)))
        assert status == 1 and "error[R108]" in text and "5000 digits" in text


def test_inspect_escapes_metadata_from_the_file(tmp_path, capsys):
    """A downloaded LoRA's metadata is someone else's text: no ESC sequence is printed raw."""
    meta = {"ss_output_name": "x\x1b]0;pwned\x07\x1b[2J", "modelspec.title": "t\u202eevil"}
    lora = _tiny_lora(tmp_path / "in.safetensors", meta)
    status, text = _run(capsys, "inspect", lora)
    assert status == 0
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[2J" in text


def test_kohya_float_beyond_int64_for_an_integer_option_is_reported_on_import(tmp_path, capsys):
    """`save_every_n_epochs = 9.3e18` would read as an integer no TOML file can hold (found by
    the kohya reader's property test): the reader reports it instead of accepting it."""
    config = tmp_path / "config.toml"
    config.write_text(
        'pretrained_model_name_or_path = "/m.safetensors"\nsave_every_n_epochs = 9.3e18\n'
    )
    status, text = _run(capsys, "import", "kohya", str(config))
    assert status == 1 and "save_every_n_epochs" in text and "64-bit" in text
