"""Golden outputs: the shared recipes compiled for SimpleTuner, file by file.

The recipes are copies of ../shared/recipes in fixtures/simpletuner/_shared (checked against the
originals when those are present). Regenerate after an intended change with
`LORAFILE_UPDATE_GOLDEN=1 pytest tests/test_simpletuner_golden.py` and review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorafile.backends.base import get
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.compiler.parse import parse_recipe

INPUTS = Path(__file__).parent / "fixtures" / "simpletuner" / "_shared"
SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = Path(__file__).parent / "golden" / "simpletuner"
UPDATE = os.environ.get("LORAFILE_UPDATE_GOLDEN") == "1"
RECIPES = sorted(INPUTS.glob("*.recipe"))


def compile_files(path: Path) -> dict[str, str]:
    """The backend's files plus `diagnostics.txt` (one `code severity: message` per line)."""
    bag = DiagnosticBag()
    recipe = parse_recipe(path.read_text(), file=str(path))
    files = dict(get("simpletuner", allow_lossy=True).write(recipe, bag).files)
    files["diagnostics.txt"] = "".join(f"{d.code} {d.severity}: {d.message}\n" for d in bag)
    return files


def check_golden(folder: Path, files: dict[str, str]) -> None:
    """Compare `files` with the golden folder (or write it when updating)."""
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
    assert folder.is_dir(), f"no golden output in {folder}; run with LORAFILE_UPDATE_GOLDEN=1"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for name, text in files.items():
        assert (folder / name).read_text(encoding="utf-8") == text, f"{folder.name}/{name} changed"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_golden(path: Path):
    check_golden(GOLDEN / path.stem, compile_files(path))


def test_inputs_are_the_shared_files():
    assert len(RECIPES) >= 3
    originals = sorted((SHARED / "recipes").glob("*.recipe"))
    for original in originals:  # only where the shared folder is mounted
        assert (INPUTS / original.name).read_text() == original.read_text(), original.name
