"""Stopping a training run on Ctrl-C (SIGINT) or SIGTERM without losing the steps since the
last `save every` checkpoint.

The first signal during the loop only sets a flag: the loop finishes the optimizer step in
progress, checks the NaN guard, writes an ordinary step checkpoint (what `--resume` reads),
marks run.json "interrupted" and raises `TrainingInterrupted`; the CLI prints how to continue
and exits 130 (SIGINT) or 143 (SIGTERM), the shell's codes for a process a signal ended. A
second signal while stopping aborts at once, as it would without lorafile (KeyboardInterrupt
for SIGINT, the default action for SIGTERM); that is safe because a checkpoint is written into
a temp folder and renamed into place (runtime/train/checkpoint.py).

Several processes (runtime/train/launch.py) agree on the step where they stop: the flag is reduced
(MAX over ranks) only where the loop already reads back from the device, once per `log_every`
steps, so a DDP run stops within `log_every` steps and never at different steps per rank.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

KILL_AT_STEP_ENV = "LORAFILE_FAULT_SIGKILL_AT_STEP"
"""Fault injection for the resume test: the process SIGKILLs itself after this optimizer step."""
SIGNAL_AT_STEP_ENV = "LORAFILE_FAULT_SIGNAL_AT_STEP"
"""Fault injection for the interrupt tests: `STEP` (SIGINT) or `STEP:TERM`; the process sends
itself the signal after that optimizer step, as a Ctrl-C or a scheduler's `kill` would."""
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on a signal after writing a checkpoint of `step` (a KeyboardInterrupt,
    so that a caller handling Ctrl-C handles it, and `except Exception` does not swallow it)."""

    def __init__(self, signum: int, step: int, total: int, checkpoint: Path | None):
        self.signum, self.step, self.total, self.checkpoint = signum, step, total, checkpoint
        super().__init__(self.sentence())

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
        return 128 + self.signum

    def sentence(self, command: str | None = None) -> str:
        """What happened, where the checkpoint is, and (given `command`) how to continue."""
        text = (
            f"Training stopped on {signal_name(self.signum)} after step {self.step} of {self.total}; "
            f"the checkpoint is {self.checkpoint}."
        )
        return text + (f" To continue exactly from it, run: {command}" if command else "")


class StopRequest:
    """SIGINT/SIGTERM handlers for the duration of a `with` block (the training loop).

    The first signal sets `signum` and writes `notice` to stderr; a second one restores the
    previous handlers and lets them act at once. Handlers install only in the main thread
    (signal.signal raises elsewhere) and not over a signal that is ignored (a `nohup` or a
    background job's SIGINT); the previous handlers come back when the block ends.
    """

    def __init__(self, notice: str | None = None):
        self.notice = notice
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # a library caller's worker thread: keep the process's behaviour
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:
                continue
            signal.signal(signum, self._handle)
            self.previous[signum] = previous
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        while self.previous:
            signum, previous = self.previous.popitem()
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.notice:  # os.write: a print here could re-enter a print in progress
                os.write(2, f"\n{self.notice}\n".encode())
            return
        previous = self.previous.get(signum, signal.SIG_DFL)
        self.restore()  # the second signal: abort at once, as without these handlers
        if callable(previous):
            previous(signum, frame)  # Python's default SIGINT handler raises KeyboardInterrupt
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # the default action: the process ends on the signal


def signal_name(signum: int) -> str:
    """`SIGINT`, `SIGTERM`, ... (the number itself for one without a name)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def notice(world: int, log_every: int) -> str:
    """The line printed at the first signal."""
    when = "after this step" if world == 1 else f"within {log_every} steps (all processes agree)"
    return (
        f"lorafile: stopping {when} and saving a checkpoint; "
        "press Ctrl-C again (or send the signal again) to abort at once without saving."
    )


def inject_faults(step: int) -> None:
    """Tests only: signal this process after `step` when the fault-injection variables say so."""
    if os.environ.get(KILL_AT_STEP_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs (test_train_resume.py)
    wanted = os.environ.get(SIGNAL_AT_STEP_ENV)
    if wanted:
        at, _, name = wanted.partition(":")
        if at == str(step):  # to the main thread: handled before the loop's next check
            signal.pthread_kill(
                threading.main_thread().ident, signal.Signals["SIG" + (name or "INT")]
            )
