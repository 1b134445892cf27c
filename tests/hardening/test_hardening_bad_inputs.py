"""Bad paths and damaged files given to any command: a coded diagnostic, never a traceback.

Each case here printed a Python traceback once; the fix sits in the reader or writer that should
have checked, and the test runs the command line as a user would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafile.cli import main


def _loop(folder: Path, name: str) -> Path:
    """`name` -> `name.2` -> `name`: a symlink loop (ELOOP when opened)."""
    (folder / f"{name}.2").symlink_to(folder / name)
    (folder / name).symlink_to(folder / f"{name}.2")
    return folder / name


@pytest.mark.parametrize("command", ["convert", "resize", "merge"])
def test_lora_input_that_is_a_symlink_loop_is_f710(tmp_path, capsys, command):
    loop = _loop(tmp_path, "loop.safetensors")
    out = tmp_path / "out.safetensors"
    args = {
        "convert": ["convert", str(loop), "--to", "diffusers", "-o", str(out)],
        "resize": ["resize", str(loop), "--rank", "2", "-o", str(out)],
        "merge": ["merge", str(loop), str(loop), "-o", str(out)],
    }[command]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "error[F710]" in err and "loop.safetensors" in err and "does not exist" in err, err
    assert not out.exists()


def test_train_output_folder_that_is_a_file_is_t576(tiny_sdxl_dir, tmp_path, capsys):
    from hardening_runs import tiny_plan

    plan = tiny_plan(tiny_sdxl_dir, tmp_path)
    (tmp_path / "file").write_text("mine")
    for out, blocker in ((tmp_path / "file", "it is a file"),
                         (tmp_path / "file" / "run", f"`{tmp_path / 'file'}` is a file")):  # fmt: skip
        assert main(["train", str(plan), "-o", str(out), "-q"]) == 1
        err = capsys.readouterr().err
        assert "error[T576]" in err and blocker in err and "Traceback" not in err, err
    assert (tmp_path / "file").read_text() == "mine"


def test_eval_output_under_a_file_is_e906(tmp_path):
    from lorafile.compiler.diagnostics import DiagnosticError
    from lorafile.runtime.evaluate.runner import prepare_out

    (tmp_path / "file").write_text("mine")
    with pytest.raises(DiagnosticError) as err:
        prepare_out(tmp_path / "file" / "eval", force=False)
    assert err.value.diagnostics[0].code == "E906"
    assert f"`{tmp_path / 'file'}` is a file" in err.value.diagnostics[0].message


def test_demo_folder_that_is_a_file_is_t576(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    for out in (tmp_path / "file", tmp_path / "file" / "demo"):
        assert main(["demo", "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert "error[T576]" in err and "is a file, not a folder" in err, err
    assert (tmp_path / "file").read_text() == "mine"


def test_a_folder_named_run_json_in_a_resumed_run_is_t576(tiny_sdxl_dir, tmp_path, capsys):
    from hardening_runs import tiny_plan

    plan, out = tiny_plan(tiny_sdxl_dir, tmp_path, save_every=1), tmp_path / "out"
    assert main(["train", str(plan), "-o", str(out), "-q"]) == 0
    (out / "run.json").unlink()
    (out / "run.json").mkdir()
    (out / "run.json" / "mine.txt").write_text("mine")
    assert main(["train", str(plan), "-o", str(out), "--resume", "-q"]) == 1
    err = capsys.readouterr().err
    assert "error[T576]" in err and "run.json` is a folder" in err and "Traceback" not in err, err
    assert (out / "run.json" / "mine.txt").read_text() == "mine"
