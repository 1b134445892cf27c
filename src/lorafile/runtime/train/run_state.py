"""A training run's hold on its output folder: the folder lock, run.json, and write failures.

* The lock (`FolderLock`): `fcntl.flock` on `<output>/.lorafile.lock`, taken before the run
  writes anything and held for its life. A second `lorafile train` into the same folder, with
  or without --force, stops with T578 naming the first run's pid. The kernel drops the lock
  when the process ends in any way (kill -9 included), so a lock is never stale.
* run.json records `status` (running, finished, interrupted, aborted, failed), the hostname and
  pid of the process, and for a failure the diagnostic (`error`: code, message, help). A
  `running` record on this host whose pid is gone (kill -9, a crash) is stale (`stale_reason`).
* A full disk or a read-only / forbidden folder while the run writes is a diagnostic
  (`writing`): T577 for ENOSPC/EDQUOT/EFBIG, T576 for EROFS/EACCES/EPERM, saying what was being
  written and where, instead of a traceback. safetensors reports these as its own error type
  ("... (os error 28)"): `os_error_of` reads the errno back out of it.

Torch-free: the lock and the record are plain files.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticError, fail
from lorafile.files import NO_SPACE_ERRORS, NOT_WRITABLE_ERRORS, file_in_the_way
from lorafile.runtime.train import checkpoint as ckpt

RUN_FILE = "run.json"
RUN_ARTIFACTS = (RUN_FILE, ckpt.CHECKPOINTS, "samples", "logs")
"""What a run writes into its output folder (caches are keyed, so they are never stale)."""
LOCK_FILE = ".lorafile.lock"
REPLACEABLE = ("failed", "aborted")
"""Statuses of an earlier run that a new run may replace without --force (when it left no
checkpoint): nothing it wrote is worth keeping."""
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")
_PATH_IN_TEXT = re.compile(r'at path "([^"]+)"')


def this_process() -> dict:
    """What run.json records to tell whether the run's process still exists."""
    return {"hostname": socket.gethostname(), "pid": os.getpid()}


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


# ---------------------------------------------------------------------------------------------
# The folder lock


def _open_lock_file(path: Path) -> int:
    """The lock file, created if needed (a separate function: tests make it fail)."""
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def refuse_file_in_the_way(out: Path) -> None:
    """T576 when the output folder, or a part of its path, is a file: mkdir would fail."""
    blocker = file_in_the_way(out)
    if blocker is not None:
        where = (
            "it is a file" if blocker == Path(os.path.abspath(out)) else f"`{blocker}` is a file"
        )
        raise fail(
            "T576",
            f"Cannot create the output folder `{out}`: {where}, not a folder.",
            "choose another output folder with -o (or the recipe's `output`); the file is "
            "left as it is",
        )


class FolderLock:
    """An exclusive lock on an output folder for the life of one run (see the module doc)."""

    def __init__(self, out: Path):
        self.out = out
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock or raise T578 naming the holder; creates the folder if needed."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the T571 check still guards the folder
            return self
        refuse_file_in_the_way(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        fd = _open_lock_file(self.out / LOCK_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise _in_use(self.out, holder) from None
        # The holder's identity, for the second run's message (the lock itself is the flock).
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(this_process()) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Let the next run in (closing the file drops the flock); idempotent."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    @property
    def held(self) -> bool:
        return self.fd is not None


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _in_use(out: Path, holder: dict) -> DiagnosticError:
    who = f"pid {holder['pid']}" if holder.get("pid") else "another process"
    if holder.get("hostname"):
        who += f" on {holder['hostname']}"
    return fail(
        "T578",
        f"The output folder `{out}` is in use by another `lorafile train` ({who}).",
        "wait for that run to end (or stop it with Ctrl-C: it saves a checkpoint), or choose "
        "another folder with -o; --force does not override a running run",
    )


# ---------------------------------------------------------------------------------------------
# run.json


def read_run_file(path: Path) -> dict:
    """The run record, or {} when there is none or it is unreadable."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def stale_reason(info: dict) -> str | None:
    """Why an earlier run's record no longer describes a live run, or None when it may.

    Failed and aborted runs ended; a `running` record is stale when it was written on this
    host and its process is gone (kill -9, a crash, a power cut). A record from another host,
    or from a lorafile that did not record its pid, cannot be checked: it stays as it is.
    """
    status = info.get("status")
    if status in REPLACEABLE:
        error = info.get("error") or {}
        code = f" ({error['code']})" if error.get("code") else ""
        return f"the earlier run {status}{code}"
    if status != "running" or not isinstance(info.get("pid"), int):
        return None
    if info.get("hostname") != socket.gethostname() or process_alive(info["pid"]):
        return None
    return f"the earlier run's process (pid {info['pid']}) is gone without finishing"


def failure_record(err: Exception) -> dict:
    """run.json's `error` for a failed run: the first error's code, message and help (an
    exception that is no diagnostic: its type and text, code null)."""
    if not isinstance(err, DiagnosticError) or not err.diagnostics:
        return {"code": None, "message": f"{type(err).__name__}: {err}", "help": ""}
    first = next((d for d in err.diagnostics if d.is_error), err.diagnostics[0])
    return {"code": first.code, "message": first.message, "help": first.help}


def resume_checkpoint(out: Path, options) -> Path | None:
    """The checkpoint `options.resume` names (None without --resume); reads, never writes."""
    if not options.resume:
        return None
    found = Path(options.resume) if options.resume is not True else ckpt.latest_checkpoint(out)
    if found is None or not (found / "state.pt").is_file():
        raise fail(
            "T572",
            f"There is no checkpoint to resume from in `{found or out / ckpt.CHECKPOINTS}`.",
            "start without --resume (add --force to replace the earlier run), or name a checkpoint folder",
        )
    return found


def prepare_output(out: Path, options) -> Path | None:
    """Guard the output folder; return the checkpoint to resume from (None: fresh run).

    An earlier run is replaced only with --force, except one that failed, was aborted or
    whose process is gone (`stale_reason`) and that left no checkpoint: nothing in it is
    worth keeping, so the new run says so and starts over.
    """
    if options.resume:
        return resume_checkpoint(out, options)
    earlier = [name for name in RUN_ARTIFACTS if (out / name).exists()]
    if earlier and not options.force:
        stale = stale_reason(read_run_file(out / RUN_FILE))
        if stale is None or ckpt.list_checkpoints(out):
            why = f"; {stale} and left checkpoints" if stale else ""
            raise fail(
                "T571",
                f"The output folder `{out}` holds an earlier run ({', '.join(earlier)}){why}.",
                "pass --resume to continue it, --force to replace it, or choose another folder with -o",
            )
        print(f"lorafile: {stale} and left no checkpoint; starting over in `{out}`.", flush=True)
    for name in earlier:  # only what a run writes; the keyed caches stay valid
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return None


# ---------------------------------------------------------------------------------------------
# Write failures


def os_error_of(err: BaseException) -> OSError | None:
    """The OSError behind a failed write: itself, or the errno in a safetensors error's text."""
    if isinstance(err, OSError):
        return err
    found = _OS_ERROR_IN_TEXT.search(str(err))
    if found is None or type(err).__name__ != "SafetensorError":
        return None
    path = _PATH_IN_TEXT.search(str(err))
    number = int(found.group(1))
    return OSError(number, os.strerror(number), path.group(1) if path else None)


def write_failure(
    err: BaseException, what: str, where: Path, then: str = "", only_under: bool = False
) -> DiagnosticError | None:
    """T577 (disk full) or T576 (read-only, no permission) for a failed write, else None.

    `what` names what was being written ("the latent cache"), `where` the folder or file;
    `then` is appended to the help (how to get the run back, e.g. the checkpoint to resume).
    `only_under`: a permission error on a file outside `where` is no write failure of it (a
    read of the base model, say) and is left alone.
    """
    os_err = os_error_of(err)
    if os_err is not None and os_err.errno == errno.EISDIR and _under(os_err, where):
        return _folder_in_the_way(os_err, what, then)
    if os_err is None or os_err.errno not in NO_SPACE_ERRORS | NOT_WRITABLE_ERRORS:
        return None
    if only_under and os_err.errno in (errno.EACCES, errno.EPERM) and not _under(os_err, where):
        return None
    reason = os.strerror(os_err.errno).lower()
    after = f"; {then}" if then else ""
    if os_err.errno in NO_SPACE_ERRORS:
        return fail(
            "T577",
            f"Writing {what} failed: {reason} (`{where}`).",
            f"free space on that disk, or choose a folder on another disk with -o{after}",
        )
    return fail(
        "T576",
        f"Cannot write {what}: {reason} (`{where}`).",
        f"choose a writable output folder with -o, or fix the folder's permissions{after}",
    )


def _folder_in_the_way(err: OSError, what: str, then: str) -> DiagnosticError:
    """T576 for a folder where the run writes a file (`run.json/`, `plan.json/`): os.replace
    names the temporary file first, the folder second."""
    folder = err.filename2 or err.filename
    after = f"; {then}" if then else ""
    return fail(
        "T576",
        f"Cannot write {what}: `{folder}` is a folder where the run writes a file.",
        f"remove or rename that folder, or choose another output folder with -o{after}",
    )


def _under(err: OSError, folder: Path) -> bool:
    """Whether the error names no file, or one inside `folder`."""
    return not err.filename or Path(os.path.abspath(err.filename)).is_relative_to(folder)


@contextmanager
def writing(what: str, where: Path, then: str = "", only_under: bool = False):
    """Turn a full disk or an unwritable folder inside the block into T577/T576 (see
    `write_failure` for the arguments)."""
    try:
        yield
    except DiagnosticError:
        raise
    except Exception as err:
        diagnostic = write_failure(err, what, where, then, only_under)
        if diagnostic is None:
            raise
        raise diagnostic from err
