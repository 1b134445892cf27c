"""Snapshot and golden-file assertions shared by every test that compares rendered output.

Set LORAFILE_UPDATE_SNAPSHOTS=1 (LORAFILE_UPDATE_GOLDEN=1 is the same switch) to rewrite the
files after an intended change, then review the diff like code: the snapshot *is* what users see.
"""

from __future__ import annotations

import os
from pathlib import Path

UPDATE = "1" in (
    os.environ.get("LORAFILE_UPDATE_SNAPSHOTS"),
    os.environ.get("LORAFILE_UPDATE_GOLDEN"),
)
HOW = "rerun with LORAFILE_UPDATE_SNAPSHOTS=1 and review the diff"


def assert_snapshot(path: Path, text: str) -> None:
    """`text` equals the snapshot file at `path` (written first when updating)."""
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no snapshot {path.name}; {HOW}"
    assert path.read_text(encoding="utf-8") == text, f"{path.name} changed; {HOW}"


def assert_snapshot_folder(folder: Path, files: dict[str, str]) -> None:
    """The golden folder holds exactly `files`, each with the same text."""
    if UPDATE:
        for name, text in files.items():
            assert_snapshot(folder / name, text)
    assert folder.is_dir(), f"no golden output in {folder}; {HOW}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for name, text in files.items():
        assert_snapshot(folder / name, text)
