"""Issue 12 §2, the native trainer's side: failures users can cause are coded diagnostics with
help and exit 1, never a traceback (caption encoding, read-only or full disks, pickle weights in
a diffusers folder, a missing `train` extra)."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
from hardening_runs import (
    lorafile_subprocess,
    one_thread,  # noqa: F401 (autouse fixture)
    os_error,
    safetensors_error,
    tiny_plan,
    tiny_recipe_file,
)

from lorafile.cli import main
from lorafile.compiler.diagnostics import DiagnosticError


def _break_a_caption(data: Path) -> Path:
    """Re-save the first caption in cp1252 ('é' is byte 0xe9: not UTF-8)."""
    caption = sorted(data.glob("*.txt"))[0]
    caption.write_bytes("zqx, une théière".encode("cp1252"))
    return caption


def _assert_caption_diagnostic(err: str, caption: Path) -> None:
    assert "T568" in err and f"`{caption}`" in err and "not UTF-8" in err
    assert "re-save it as UTF-8" in err and "Traceback" not in err


def test_plan_and_compile_name_a_caption_file_that_is_not_utf8(tiny_sdxl_dir, tmp_path, capsys):
    recipe = tiny_recipe_file(tiny_sdxl_dir, tmp_path)
    caption = _break_a_caption(tmp_path / "data")
    assert main(["plan", str(recipe)]) == 1
    _assert_caption_diagnostic(capsys.readouterr().err, caption)
    out = tmp_path / "compiled"
    assert main(["compile", str(recipe), "--target", "native", "-o", str(out)]) == 1
    _assert_caption_diagnostic(capsys.readouterr().err, caption)
    assert not (out / "plan.json").exists()


def test_train_names_a_caption_file_that_is_not_utf8(tiny_sdxl_dir, tmp_path, capsys):
    recipe = tiny_recipe_file(tiny_sdxl_dir, tmp_path)
    plan = tiny_plan(tiny_sdxl_dir, tmp_path)  # built while the captions were fine
    caption = _break_a_caption(tmp_path / "data")
    assert main(["train", str(recipe), "-q"]) == 1  # the recipe: the plan is built now
    _assert_caption_diagnostic(capsys.readouterr().err, caption)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    out = tmp_path / "from-plan"
    assert main(["train", str(plan), "-o", str(out), "-q"]) == 1  # the trainer's own scan
    _assert_caption_diagnostic(capsys.readouterr().err, caption)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]["code"] == "T568"


def test_a_caption_with_a_byte_order_mark_reads_as_utf8(tmp_path):
    from lorafile.runtime.train.data import caption_for

    image = tmp_path / "a.png"
    image.with_suffix(".txt").write_bytes("\ufeffzqx, a théière".encode())
    assert caption_for(image, "txt")[0] == "zqx, a théière"


@pytest.mark.parametrize(
    ("number", "code", "words"),
    [
        (errno.EROFS, "T576", "read-only file system"),
        (errno.EACCES, "T576", "permission denied"),
        (errno.ENOSPC, "T577", "no space left on device"),
    ],
)
def test_an_output_folder_that_cannot_be_written(
    tiny_sdxl_dir, tmp_path, monkeypatch, capsys, number, code, words
):
    """Root ignores chmod, so the lock file's creation (the run's first write) is made to fail
    the way a read-only mount, a forbidden folder or a full disk fails it."""
    from lorafile.runtime.train import run_state

    plan = tiny_plan(tiny_sdxl_dir, tmp_path)
    out = tmp_path / "ro"

    def refuse(path):
        raise os_error(number, str(path))

    monkeypatch.setattr(run_state, "_open_lock_file", refuse)
    assert main(["train", str(plan), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert code in err and words in err and f"`{out}`" in err and "Traceback" not in err
    assert "-o" in err  # the help says where to go instead
    assert not (out / "run.json").exists()


def test_a_read_only_run_file_write_is_a_diagnostic(tiny_sdxl_dir, tmp_path, monkeypatch, capsys):
    from lorafile.runtime.train import loop as train_module

    plan = tiny_plan(tiny_sdxl_dir, tmp_path)

    def refuse(path, text, mode=None):
        raise os_error(errno.EROFS, str(path))

    monkeypatch.setattr(train_module, "write_text_atomic", refuse)
    assert main(["train", str(plan), "-o", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "T576" in err and "read-only file system" in err and "Traceback" not in err


def _full_disk_for(monkeypatch, fragment: str) -> None:
    """safetensors' save_file fails like a full disk for paths containing `fragment`."""
    import safetensors.torch

    save_file = safetensors.torch.save_file

    def full(tensors, filename, *args, **kwargs):
        if fragment in str(filename):
            raise safetensors_error(errno.ENOSPC)
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full)


def test_a_full_disk_while_writing_a_checkpoint(tiny_sdxl_dir, tmp_path, monkeypatch, capsys):
    plan = tiny_plan(tiny_sdxl_dir, tmp_path, save_every=1)
    _full_disk_for(monkeypatch, "/checkpoints/")
    out = tmp_path / "out"
    assert main(["train", str(plan), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "T577" in err and "Writing a checkpoint failed: no space left on device" in err
    assert "step-000001" in err and "Traceback" not in err
    assert list((out / "checkpoints").iterdir()) == []  # no temp folder left behind
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]["code"] == "T577" and run["step"] == 1


def test_a_full_disk_while_filling_the_cache(tiny_sdxl_dir, tmp_path, monkeypatch, capsys):
    plan = tiny_plan(tiny_sdxl_dir, tmp_path)
    _full_disk_for(monkeypatch, "/cache/")
    out = tmp_path / "out"
    assert main(["train", str(plan), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "T577" in err and "the latent and text cache" in err and "Traceback" not in err
    assert [p.name for p in (out / "cache" / "latents").iterdir()] == []  # no temp file left
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]["code"] == "T577" and run["step"] == 0


def _with_pickle_weights(model: Path, tmp_path: Path, part: str, marker: Path) -> Path:
    """A copy of the tiny diffusers folder whose `part` weights are a pickle that, if anything
    unpickled it, would create `marker`."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "pickled"
    shutil.copytree(model, folder)
    for weights in (folder / part).glob("*.safetensors"):
        weights.unlink()
    name = "diffusion_pytorch_model.bin" if part in ("unet", "vae") else "pytorch_model.bin"
    (folder / part / name).write_bytes(pickle.dumps({"weight": Payload()}))
    return folder


@pytest.mark.parametrize("part", ["unet", "text_encoder_2", "vae"])
def test_pickle_weights_in_a_diffusers_folder_are_refused_before_loading(
    tiny_sdxl_dir, tmp_path, part
):
    from lorafile.runtime.models.sdxl import load_sdxl, load_vae

    marker = tmp_path / "unpickled"
    folder = _with_pickle_weights(tiny_sdxl_dir / "diffusers", tmp_path, part, marker)
    with pytest.raises(DiagnosticError) as refused:
        load_sdxl(folder)
    assert refused.value.diagnostics[0].code == "F702"
    assert f"`{folder / part}`" in refused.value.diagnostics[0].message
    assert "--allow-pickle" in refused.value.diagnostics[0].help
    if part == "vae":
        with pytest.raises(DiagnosticError, match="F702"):
            load_vae(folder)
    assert not marker.exists()


def test_train_refuses_a_diffusers_base_with_pickle_weights(tiny_sdxl_dir, tmp_path, capsys):
    marker = tmp_path / "unpickled"
    folder = _with_pickle_weights(tiny_sdxl_dir / "diffusers", tmp_path, "unet", marker)
    plan_path = tiny_plan(tiny_sdxl_dir, tmp_path)
    plan = json.loads(plan_path.read_text())
    plan["resolved"]["base"] = str(folder)
    plan_path.write_text(json.dumps(plan))
    out = tmp_path / "out"
    assert main(["train", str(plan_path), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "F702" in err and "pickle" in err and "Traceback" not in err
    assert not marker.exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]["code"] == "F702"


def test_a_diffusers_part_without_weights_is_f703(tiny_sdxl_dir, tmp_path):
    from lorafile.runtime.models.sdxl import load_sdxl

    folder = tmp_path / "empty-unet"
    shutil.copytree(tiny_sdxl_dir / "diffusers", folder)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(DiagnosticError, match="F703"):
        load_sdxl(folder)


@pytest.mark.parametrize("module", ["diffusers", "torch"])
def test_train_without_the_train_extra_names_it(tiny_sdxl_dir, tmp_path, module):
    """A missing package (`None` in sys.modules makes its import fail as if absent)."""
    recipe = tiny_recipe_file(tiny_sdxl_dir, tmp_path)
    prelude = f"import sys\nsys.modules[{module!r}] = None"
    done = lorafile_subprocess("train", str(recipe), "-q", prelude=prelude)
    assert done.returncode == 1, done.stderr
    assert "T569" in done.stderr and 'pip install "lorafile[train]"' in done.stderr
    assert module in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_late_missing_module_of_the_extra_is_t569():
    from lorafile.runtime.environment import as_missing_extra

    found = as_missing_extra(
        ModuleNotFoundError("No module named 'peft.tuners'", name="peft.tuners")
    )
    assert found is not None and found.diagnostics[0].code == "T569"
    assert "peft" in found.diagnostics[0].message
    assert as_missing_extra(ModuleNotFoundError("x", name="scipy")) is None


def test_a_permission_error_on_a_file_outside_the_output_folder_is_no_write_failure(tmp_path):
    """The trainer's catch-all guard must not call an unreadable base model an output problem."""
    from lorafile.runtime.train.run_state import write_failure

    read = os_error(errno.EACCES, "/models/base.safetensors")
    assert write_failure(read, "into the output folder", tmp_path, only_under=True) is None
    inside = os_error(errno.EACCES, str(tmp_path / "run.json"))
    found = write_failure(inside, "into the output folder", tmp_path, only_under=True)
    assert found is not None and found.diagnostics[0].code == "T576"
    assert write_failure(os_error(errno.EIO), "x", tmp_path) is None  # not a disk-space matter


@pytest.mark.parametrize(
    ("err", "code"),
    [(errno.ENOSPC, "T577"), (errno.EDQUOT, "T577"), (errno.EFBIG, "T577"), (errno.EROFS, "T576")],
)
def test_the_trainer_and_the_commands_agree_on_what_a_full_disk_is(tmp_path, err, code):
    """One table (lorafile.files) decides "no space" for train's T577 and the commands' F731."""
    from lorafile.commands._output import write_failure as command_write_failure
    from lorafile.runtime.train.run_state import write_failure

    found = write_failure(os_error(err, str(tmp_path / "a")), "the adapter", tmp_path)
    assert found is not None and found.diagnostics[0].code == code
    command_code = command_write_failure(tmp_path / "a", os_error(err, str(tmp_path))).code
    assert command_code == ("F731" if code == "T577" else "F730")
