"""Golden outputs: the shared recipes compiled for kohya, and the seed config imported.

The recipes are copies of ../shared/recipes in fixtures/kohya/_shared (checked against the
originals when those are present). Regenerate after an intended change with
`LORAFILE_UPDATE_GOLDEN=1 pytest tests/backends/kohya/test_kohya_golden.py` and review the diff like code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafile.backends.base import get
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.compiler.format import format_recipe
from lorafile.compiler.parse import parse_recipe
from repo_paths import TESTS
from snapshot import assert_snapshot_folder

HERE = TESTS
INPUTS = HERE / "fixtures" / "kohya" / "_shared"
SHARED = HERE.resolve().parents[1] / "shared"
GOLDEN = HERE / "golden" / "kohya"
RECIPES = sorted(INPUTS.glob("*.recipe"))


def _diagnostics(bag: DiagnosticBag) -> str:
    return "".join(f"{d.code} {d.severity} line {d.line}: {d.message}\n" for d in bag)


def compile_files(path: Path) -> dict[str, str]:
    """The backend's files plus `diagnostics.txt` (one line per diagnostic)."""
    bag = DiagnosticBag()
    recipe = parse_recipe(path.read_text(), file=str(path))
    files = dict(get("kohya").write(recipe, bag).files)
    files["diagnostics.txt"] = _diagnostics(bag)
    return files


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_golden_compile(path: Path):
    assert_snapshot_folder(GOLDEN / path.stem, compile_files(path))


def test_golden_import_of_the_seed_config():
    config = HERE / "fixtures" / "kohya" / "01_seed_style_lora.toml"
    bag = DiagnosticBag()
    recipe = get("kohya").read(config, bag)
    text = format_recipe(recipe)
    assert parse_recipe(text) == recipe  # the imported recipe is a valid, lossless recipe
    assert_snapshot_folder(
        GOLDEN / "import_seed_style_lora",
        {"recipe.recipe": text, "diagnostics.txt": _diagnostics(bag)},
    )


def test_inputs_are_the_shared_files():
    assert len(RECIPES) == 3
    for original in sorted((SHARED / "recipes").glob("*.recipe")):  # where shared is mounted
        assert (INPUTS / original.name).read_text() == original.read_text(), original.name
