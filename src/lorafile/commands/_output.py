"""A command's output files: a coded diagnostic, not a traceback, when they cannot be written.

`compile`, `migrate`, `import -o`, `fmt --write` and `convert` write through lorafile/files.py
(a temporary file, then a rename). The file system can still refuse: a read-only mount, no
permission, a full disk, or an output path whose parent is a file. Each of those is an OSError
from the writer; `reporting_write_errors` turns it into F730 (cannot write there) or F731 (no
space), naming the path and saying what to do (issue 12).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lorafile.compiler.diagnostics import Diagnostic, DiagnosticError
from lorafile.files import NO_SPACE_ERRORS, exists, is_dir

REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


@contextmanager
def reporting_write_errors(target: str | os.PathLike) -> Iterator[None]:
    """Run a write of `target` (a file or a folder); an OSError becomes F730/F731."""
    try:
        yield
    except OSError as err:
        raise DiagnosticError([write_failure(target, err)]) from None


def write_failure(target: str | os.PathLike, err: OSError) -> Diagnostic:
    """The diagnostic for an OSError raised while writing `target`."""
    where = err.filename if err.filename is not None else target
    if err.errno in NO_SPACE_ERRORS:
        return Diagnostic(
            "F731",
            f"No space left on the disk while writing `{where}`; nothing was replaced.",
            "free some space, or write to another disk with -o",
            file=str(target),
        )
    reason = REASONS.get(err.errno, err.strerror or str(err))
    return Diagnostic(
        "F730",
        f"Cannot write `{where}`: {reason}.",
        "choose a writable output with -o, or fix the folder's permissions or mount",
        file=str(target),
    )


def refuse_folder_as_file(path: str | os.PathLike) -> None:
    """F730 before any work when `path`, meant to be a file, is an existing folder."""
    if is_dir(path):
        raise DiagnosticError(
            [
                Diagnostic(
                    "F730",
                    f"`{path}` is a folder; the output must be a file name.",
                    f"give a file name, e.g. -o {Path(path) / 'out.safetensors'}",
                    file=str(path),
                )
            ]
        )


def refuse_file_as_folder(path: str | os.PathLike) -> None:
    """F730 before any work when `path`, meant to be a folder, is an existing file."""
    if exists(path) and not is_dir(path):
        raise DiagnosticError(
            [
                Diagnostic(
                    "F730",
                    f"`{path}` is a file; the output must be a folder.",
                    "give a folder name with -o (it is created if missing)",
                    file=str(path),
                )
            ]
        )
