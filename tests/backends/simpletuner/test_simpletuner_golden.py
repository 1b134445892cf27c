"""Golden outputs: the shared recipes compiled for SimpleTuner, file by file.

The recipes are copies of ../shared/recipes in fixtures/simpletuner/_shared (checked against the
originals when those are present). Regenerate after an intended change with
`LORAFILE_UPDATE_GOLDEN=1 pytest tests/backends/simpletuner/test_simpletuner_golden.py` and review the diff like code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafile.backends.base import get
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.compiler.parse import parse_recipe
from repo_paths import ROOT, TESTS
from snapshot import assert_snapshot_folder

INPUTS = TESTS / "fixtures" / "simpletuner" / "_shared"
SHARED = ROOT.parent / "shared"
GOLDEN = TESTS / "golden" / "simpletuner"
RECIPES = sorted(INPUTS.glob("*.recipe"))


def compile_files(path: Path) -> dict[str, str]:
    """The backend's files plus `diagnostics.txt` (one `code severity: message` per line)."""
    bag = DiagnosticBag()
    recipe = parse_recipe(path.read_text(), file=str(path))
    files = dict(get("simpletuner", allow_lossy=True).write(recipe, bag).files)
    files["diagnostics.txt"] = "".join(f"{d.code} {d.severity}: {d.message}\n" for d in bag)
    return files


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_golden(path: Path):
    assert_snapshot_folder(GOLDEN / path.stem, compile_files(path))


def test_inputs_are_the_shared_files():
    assert len(RECIPES) >= 3
    originals = sorted((SHARED / "recipes").glob("*.recipe"))
    for original in originals:  # only where the shared folder is mounted
        assert (INPUTS / original.name).read_text() == original.read_text(), original.name
