"""Writing user-visible files so that a crash never leaves a half-written one.

Every file lorafile writes for a user goes through here: text (formatted recipes, compiled
trainer configs, migrated configs, imported recipes, the trainer's plan.json and run.json) with
`write_text_atomic`, bytes from another writer (safetensors adapters, cache entries) with
`atomic_path`. The content goes to a temporary file in the same folder (same file system, so
the rename is atomic), is flushed to disk, then replaces the target; on any failure, a
KeyboardInterrupt included, the temporary file is removed and the target is untouched.
Torch-free: the compile path imports this module.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

NO_SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""A write the disk cannot hold: full, over quota, or over the largest file it allows."""
NOT_WRITABLE_ERRORS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
"""A write the file system refuses: a read-only mount, or no permission."""


@contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block ends.

        with atomic_path(out) as tmp:
            save_file(tensors, str(tmp))

    On success the temporary file is fsynced and renamed onto `path` (afterwards `path` holds
    either the old or the new content, never a part); on any exception it is removed and the
    exception propagates. Writes through a symlink rather than replacing the link. `mode`
    defaults to the existing file's permissions, or 0o644 for a new file.
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """Flush a file the caller's writer closed: the rename must not reach the disk first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> Path:
    """Replace `path` with `text`: afterwards the file holds either the old or the new text.

    Writes through a symlink rather than replacing the link. `mode` defaults to the existing
    file's permissions, or 0o644 for a new file.
    """
    path = Path(os.path.realpath(path))
    with atomic_path(path, mode) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return path


def write_files(
    folder: Path, files: dict[str, str], executable: Collection[str] = frozenset()
) -> list[Path]:
    """Write each named file under `folder` atomically; other files in the folder stay."""
    return [
        write_text_atomic(folder / name, text, 0o755 if name in executable else 0o644)
        for name, text in files.items()
    ]


# ---- Looking at paths a user or a config named ------------------------------------------------
# pathlib's is_dir/is_file/exists raise for a name the OS refuses to look up (longer than
# NAME_MAX or PATH_MAX, a folder without search permission); a path from a recipe or a foreign
# config is user text, so the compile path asks these, which answer False instead (issue 12).


def _mode(path: str | os.PathLike) -> int | None:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def is_dir(path: str | os.PathLike) -> bool:
    """True when `path` is a folder (or a link to one); False when it cannot be looked up."""
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def is_file(path: str | os.PathLike) -> bool:
    """True when `path` is a regular file (or a link to one); False when it cannot be looked up."""
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def exists(path: str | os.PathLike) -> bool:
    """True when `path` names something; False when it cannot be looked up."""
    return _mode(path) is not None


def real_path(path: str | os.PathLike) -> Path:
    """`path` made absolute with its symlinks followed, like `Path.resolve()`, except that a
    symlink loop is left as it is instead of raising RuntimeError (Python < 3.13): the caller
    then finds that the path does not exist, and says so with its own diagnostic."""
    return Path(os.path.realpath(path))


def file_in_the_way(folder: str | os.PathLike) -> Path | None:
    """What stops `folder` from being created or used as a folder: `folder` itself, or the
    nearest part of the path above it that exists, when that is not a folder (a file, a
    broken or looping symlink); None when `folder` is a folder or can be made with mkdir -p."""
    path = Path(os.path.abspath(folder))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return None if is_dir(path) else path
