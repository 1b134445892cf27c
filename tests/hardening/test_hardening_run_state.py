"""Issue 12 §4: runs that lose work or lie about their state. run.json records failures with
their diagnostic and the process (hostname, pid); a dead run is stale; one run per output
folder (a lock); a failure after training keeps the trained state resumable; temp names are
unique."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hardening_runs import SUBPROCESS_TIMEOUT, os_error, tiny_plan
from hardening_runs import one_thread as one_thread  # autouse fixture

from lorafile.cli import main
from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.train import checkpoint as ckpt
from lorafile.runtime.train.loop import TrainOptions
from lorafile.runtime.train.run_state import FolderLock, prepare_output


def _run_file(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failure_marks_the_run_failed_with_its_diagnostic(tiny_sdxl_dir, tmp_path, capsys):
    plan_path = tiny_plan(tiny_sdxl_dir, tmp_path)
    plan = json.loads(plan_path.read_text())
    plan["resolved"]["base"] = str(tmp_path / "gone.safetensors")  # moved since the plan
    plan_path.write_text(json.dumps(plan))
    out = tmp_path / "out"
    assert main(["train", str(plan_path), "-o", str(out), "-q"]) == 1
    assert "F701" in capsys.readouterr().err
    run = _run_file(out)
    assert run["status"] == "failed" and run["error"]["code"] == "F701"
    assert "gone.safetensors" in run["error"]["message"] and run["error"]["help"]
    assert run["hostname"] == socket.gethostname() and run["pid"] == os.getpid()


def test_too_few_images_marks_the_run_failed(tiny_sdxl_dir, tmp_path, capsys):
    plan = tiny_plan(tiny_sdxl_dir, tmp_path)
    for image in (tmp_path / "data").glob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\nbroken since the plan was built")
    out = tmp_path / "out"
    assert main(["train", str(plan), "-o", str(out), "-q"]) == 1
    assert "T574" in capsys.readouterr().err
    assert _run_file(out)["status"] == "failed" and _run_file(out)["error"]["code"] == "T574"


def _earlier_run(out: Path, **record) -> None:
    (out / "logs").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps(record))


def test_a_running_record_whose_process_is_gone_is_stale(tmp_path, capsys):
    out = tmp_path / "out"
    _earlier_run(out, status="running", hostname=socket.gethostname(), pid=_dead_pid())
    assert prepare_output(out, TrainOptions()) is None  # no --force needed
    said = capsys.readouterr().out
    assert "is gone without finishing" in said and "starting over" in said
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_failed_run_without_checkpoints_is_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    _earlier_run(out, status="failed", error={"code": "T577", "message": "disk full"})
    assert prepare_output(out, TrainOptions()) is None
    assert "the earlier run failed (T577)" in capsys.readouterr().out
    assert not (out / "run.json").exists()


@pytest.mark.parametrize(
    "record",
    [
        {"status": "running", "pid": 1},  # alive (init)
        {"status": "running", "pid": 12345, "hostname": "another-machine"},  # cannot check
        {"status": "running"},  # written before runs recorded their pid
        {"status": "finished"},
    ],
)
def test_a_run_that_may_be_alive_or_finished_still_needs_force(tmp_path, record):
    out = tmp_path / "out"
    record.setdefault("hostname", socket.gethostname())
    _earlier_run(out, **record)
    with pytest.raises(DiagnosticError, match="T571"):
        prepare_output(out, TrainOptions())
    assert (out / "run.json").exists()


def test_a_dead_run_that_left_checkpoints_is_kept_for_resume(tmp_path):
    out = tmp_path / "out"
    _earlier_run(out, status="running", hostname=socket.gethostname(), pid=_dead_pid())
    (out / "checkpoints" / "step-000004").mkdir(parents=True)
    with pytest.raises(DiagnosticError) as kept:
        prepare_output(out, TrainOptions())
    assert kept.value.diagnostics[0].code == "T571"
    assert "left checkpoints" in kept.value.diagnostics[0].message
    assert "--resume" in kept.value.diagnostics[0].help


def test_a_second_run_into_a_held_folder_stops_before_writing(tiny_sdxl_dir, tmp_path, capsys):
    plan = tiny_plan(tiny_sdxl_dir, tmp_path)
    out = tmp_path / "out"
    lock = FolderLock(out).acquire()  # a first run, in this process
    try:
        before = sorted(p.name for p in out.iterdir())
        for extra in ([], ["--force"]):
            assert main(["train", str(plan), "-o", str(out), "-q", *extra]) == 1
            err = capsys.readouterr().err
            assert "T578" in err and f"pid {os.getpid()}" in err and "Traceback" not in err
            assert sorted(p.name for p in out.iterdir()) == before
    finally:
        lock.release()


HOLD_THE_LOCK = """
import sys
from pathlib import Path
from lorafile.runtime.train.run_state import FolderLock
FolderLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
"""


def test_the_lock_names_the_other_process_and_dies_with_it(tiny_sdxl_dir, tmp_path, capsys):
    plan = tiny_plan(tiny_sdxl_dir, tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", str(plan), "-o", str(out), "--force", "-q"]) == 1
        err = capsys.readouterr().err
        assert "T578" in err and f"pid {holder.pid} on {socket.gethostname()}" in err
    finally:
        holder.stdin.close()
        holder.wait(timeout=SUBPROCESS_TIMEOUT)
    FolderLock(out).acquire().release()  # the kernel dropped the lock with the process


def test_the_lock_is_released_when_a_run_fails(tiny_sdxl_dir, tmp_path):
    plan_path = tiny_plan(tiny_sdxl_dir, tmp_path)
    plan = json.loads(plan_path.read_text())
    plan["resolved"]["base"] = str(tmp_path / "gone.safetensors")
    plan_path.write_text(json.dumps(plan))
    out = tmp_path / "out"
    assert main(["train", str(plan_path), "-o", str(out), "-q"]) == 1
    FolderLock(out).acquire().release()


def test_a_full_disk_at_the_final_export_keeps_the_trained_state(
    tiny_sdxl_dir, tmp_path, monkeypatch, capsys
):
    """No `save every`: the run still ends with a resumable checkpoint when the adapter file
    cannot be written, and `--resume` writes the very adapter an undisturbed run writes."""
    from lorafile.runtime.train.loop import Trainer

    plan = tiny_plan(tiny_sdxl_dir, tmp_path)
    whole = tmp_path / "whole"
    assert main(["train", str(plan), "-o", str(whole), "-q"]) == 0
    assert not (whole / "checkpoints").exists()  # the safety checkpoint is removed after
    capsys.readouterr()

    export, out = Trainer.export, tmp_path / "out"

    def full_disk(self, path):
        if Path(path).parent == out:  # the final adapter, not the one inside a checkpoint
            raise os_error(errno.ENOSPC, str(path))
        return export(self, path)

    monkeypatch.setattr(Trainer, "export", full_disk)
    assert main(["train", str(plan), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    kept = out / "checkpoints" / "step-000002"
    assert "T577" in err and "Writing the adapter file failed" in err
    assert f"`{kept}`" in err and "--resume" in err and "Traceback" not in err
    assert (kept / "state.pt").is_file() and not (out / "tiny.safetensors").exists()
    assert _run_file(out)["status"] == "failed" and _run_file(out)["error"]["code"] == "T577"

    monkeypatch.setattr(Trainer, "export", export)
    assert main(["train", str(plan), "-o", str(out), "-q"]) == 1  # kept: not replaced
    assert "T571" in capsys.readouterr().err
    assert main(["train", str(plan), "-o", str(out), "--resume", "-q"]) == 0
    from safetensors.torch import load_file

    a, b = load_file(whole / "tiny.safetensors"), load_file(out / "tiny.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert _run_file(out)["status"] == "finished"


def test_checkpoint_temp_folders_have_unique_names(tmp_path):
    import torch

    seen = []

    def export(folder):
        seen.append(folder.name)

    for _ in range(2):
        ckpt.save_checkpoint(tmp_path, 3, {"w": torch.ones(2)}, {"step": 3}, export, None)
    assert len(set(seen)) == 2 and all(n.startswith(".step-000003.") for n in seen)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]
    assert oct((tmp_path / "checkpoints" / "step-000003").stat().st_mode & 0o777) == "0o755"
    (tmp_path / "checkpoints" / ".step-000006.abc.tmp").mkdir()  # a killed save
    ckpt.remove_temp_folders(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]


def test_an_unexpected_error_is_recorded_too(tiny_sdxl_dir, tmp_path, monkeypatch):
    from lorafile.runtime.train.loop import Trainer

    def broken(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(Trainer, "_build_optimizer", broken)
    plan = tiny_plan(tiny_sdxl_dir, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        main(["train", str(plan), "-o", str(out), "-q"])
    error = _run_file(out)["error"]
    assert _run_file(out)["status"] == "failed" and error["code"] is None
    assert error["message"].startswith("RuntimeError: CUDA error")
    FolderLock(out).acquire().release()
