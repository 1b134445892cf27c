"""Ctrl-C / SIGTERM: the run stops after the step in progress with a checkpoint of it, says how
to continue, exits 130 / 143, and the resumed run ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import json
import shlex
import signal
import threading

import pytest

from lorafile.cli import main
from lorafile.runtime.train import launch
from lorafile.runtime.train.interrupt import SIGNAL_AT_STEP_ENV, TrainingInterrupted
from lorafile.runtime.train.loop import TrainOptions, train
from train_runs import assert_same_adapters, checkpointed_plan, train_cli


@pytest.fixture
def plan_path(tiny_sdxl_dir, tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocess's thread count: the same float sums
    yield checkpointed_plan(tiny_sdxl_dir, tmp_path)
    torch.set_num_threads(threads)


def _custom_handler(signum, frame):  # a library caller's own handler, to see it come back
    raise AssertionError("not called")


def test_sigint_saves_the_step_and_the_printed_command_resumes_exactly(plan_path, tmp_path):
    previous = signal.signal(signal.SIGTERM, _custom_handler)
    try:
        train(json.loads(plan_path.read_text()), TrainOptions(out=tmp_path / "whole", quiet=True))
        assert signal.getsignal(signal.SIGTERM) is _custom_handler  # restored after train()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)

    out = tmp_path / "stopped"
    stopped = train_cli(plan_path, out, signal_at=5)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    # The step in progress finished and was saved; the earlier outputs are intact.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000003",
        "step-000005",
    ]
    assert (out / "checkpoints" / "step-000003" / "state.pt").is_file()
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000002", "step-000004"]
    assert (out / "plan.json").is_file() and not (out / "tiny.safetensors").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["step"] == 5 and run["signal"] == "SIGINT"
    assert run["checkpoint"] == str(out / "checkpoints" / "step-000005")
    # One sentence: what happened, where, and the command that continues.
    assert "Training stopped on SIGINT after step 5 of 7" in stopped.stderr
    assert str(out / "checkpoints" / "step-000005") in stopped.stderr
    command = shlex.split(stopped.stderr.rsplit("run: ", 1)[1])
    assert command[:3] == ["lorafile", "train", str(plan_path)] and "--resume" in command

    assert main(command[1:]) == 0  # the printed command, as a person would paste it
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert_same_adapters(tmp_path / "whole", out, checkpoint_step=6)


def test_sigterm_exits_143_after_the_step_and_restores_handlers(plan_path, tmp_path, monkeypatch):
    assert threading.current_thread() is threading.main_thread()  # else SIGTERM ends pytest
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv(SIGNAL_AT_STEP_ENV, "3:TERM")  # step 3 is also a `save every` step
    out = tmp_path / "stopped"
    assert main(["train", str(plan_path), "-o", str(out), "-q"]) == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["step"] == 3 and run["signal"] == "SIGTERM"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000003"]


def test_ddp_ranks_stop_at_a_flush_point_when_any_rank_is_signalled(
    plan_path, tmp_path, monkeypatch
):
    """A DDP rank checks the stop flag only at flush points (every `log_every` steps) and stops
    when the reduction over the ranks says so, even when its own flag is unset."""
    asked = []

    def another_rank_was_signalled(signum):  # stands in for the all-reduce MAX over ranks
        asked.append(signum)
        return signal.SIGTERM if len(asked) == 2 else 0

    monkeypatch.setattr(launch, "agreed_signal", another_rank_was_signalled)
    plan = json.loads(plan_path.read_text())
    options = TrainOptions(out=tmp_path / "ddp", quiet=True, log_every=2)
    with pytest.raises(TrainingInterrupted) as stop:
        launch.trainer(plan, options).setup().train()
    assert asked == [0, 0]  # after steps 2 and 4 only: this rank had no signal of its own
    assert stop.value.step == 4 and stop.value.exit_code == 143
    assert (tmp_path / "ddp" / "checkpoints" / "step-000004" / "adapter.safetensors").is_file()


def test_a_failed_checkpoint_write_leaves_no_temp_folder(tmp_path):
    import torch

    from lorafile.runtime.train import checkpoint as ckpt

    def export(folder):
        raise KeyboardInterrupt  # a second Ctrl-C while the checkpoint is written

    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 4, {"w": torch.ones(2)}, {"step": 4}, export, None)
    assert list((tmp_path / ckpt.CHECKPOINTS).iterdir()) == []


def test_a_second_signal_while_stopping_aborts_without_a_partial_checkpoint(
    plan_path, tmp_path, monkeypatch, capsys
):
    from lorafile.runtime.train.loop import Trainer

    export = Trainer.export

    def export_interrupted(self, path):  # the stop's checkpoint is being written: Ctrl-C again
        signal.raise_signal(signal.SIGINT)
        return export(self, path)

    monkeypatch.setattr(Trainer, "export", export_interrupted)
    monkeypatch.setenv(SIGNAL_AT_STEP_ENV, "2")
    out = tmp_path / "aborted"
    assert main(["train", str(plan_path), "-o", str(out), "-q"]) == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not (out / "checkpoints").exists() or list((out / "checkpoints").iterdir()) == []
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "aborted" and run["checkpoint"] is None
    assert "Aborted at once after step 2" in capsys.readouterr().err


def test_the_launcher_names_the_command_that_resumes_a_ddp_run(tmp_path):
    from lorafile.cli import build_parser

    argv = ["train", "r.recipe", "-o", str(tmp_path), "--resume", "x/step-000003", "--force"]
    args = build_parser().parse_args([*argv, "--gpus", "2", "--cpu", "--log-every", "5"])
    command = shlex.split(launch.resume_command(args))
    assert command[:5] == ["lorafile", "train", "r.recipe", "-o", str(tmp_path.resolve())]
    assert command.count("--resume") == 1 and "x/step-000003" not in command
    assert "--force" not in command  # a resume keeps the outputs
    assert {"--cpu", "--gpus", "2", "--log-every", "5"} <= set(command)

    assert "--force" in launch.stopped_sentence(tmp_path, "CMD")  # nothing saved yet
    (tmp_path / "checkpoints" / "step-000004").mkdir(parents=True)
    assert launch.stopped_sentence(tmp_path, "CMD").endswith("step-000004, run: CMD")


def test_a_stop_after_a_nan_loss_saves_nothing(plan_path, tmp_path, monkeypatch, capsys):
    from lorafile.runtime.train.loop import Trainer

    micro_step, calls = Trainer.micro_step, []  # both step forms go through it

    def nan_loss(self, epoch, index, batch):
        calls.append(self.step)
        return micro_step(self, epoch, index, batch) * float("nan")

    monkeypatch.setattr(Trainer, "micro_step", nan_loss)
    monkeypatch.setenv(SIGNAL_AT_STEP_ENV, "1")  # no flush, save or sample at step 1
    out = tmp_path / "nan"
    assert main(["train", str(plan_path), "-o", str(out), "-q"]) == 1
    assert calls == [0, 0]  # step 1's two micro-batches: the stop's own NaN check ended it
    assert "T573" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert not (out / "checkpoints").exists()


def test_stop_request_keeps_ignored_signals_and_other_threads_alone():
    from lorafile.runtime.train.interrupt import StopRequest

    assert threading.current_thread() is threading.main_thread()  # else SIGTERM ends pytest
    term = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
            signal.raise_signal(signal.SIGTERM)
            assert stop.signum == signal.SIGTERM  # the first signal only sets the flag
        assert signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGINT, previous)

    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopRequest().__enter__().previous))
    thread.start()
    thread.join()
    assert seen == [{}]  # not the main thread: nothing installed, no error
