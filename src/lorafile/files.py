"""Writing user-visible files so that a crash never leaves a half-written one.

Every text file lorafile writes for a user (formatted recipes, compiled trainer configs, migrated
configs, imported recipes) goes through here: the text goes to a temporary file in the same
folder (same file system, so the rename is atomic), is flushed to disk, then replaces the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection
from pathlib import Path


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> Path:
    """Replace `path` with `text`: afterwards the file holds either the old or the new text.

    Writes through a symlink rather than replacing the link. `mode` defaults to the existing
    file's permissions, or 0o644 for a new file.
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_files(
    folder: Path, files: dict[str, str], executable: Collection[str] = frozenset()
) -> list[Path]:
    """Write each named file under `folder` atomically; other files in the folder stay."""
    return [
        write_text_atomic(folder / name, text, 0o755 if name in executable else 0o644)
        for name, text in files.items()
    ]
