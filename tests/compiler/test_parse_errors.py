"""Bad recipes: each file in tests/fixtures/bad/ has a snapshot of its rendered diagnostics.

Regenerate the snapshots with `LORAFILE_UPDATE_SNAPSHOTS=1 pytest tests/compiler/test_parse_errors.py`,
then read the diff by eye: the snapshot *is* the user-facing text (ruff's snapshot style).
"""

from __future__ import annotations

import pytest

from lorafile.compiler.diagnostics import MAX_REPORTED, DiagnosticError, render_all
from lorafile.compiler.parse import parse_recipe
from repo_paths import TESTS
from snapshot import assert_snapshot

BAD = TESTS / "fixtures" / "bad"
CASES = sorted(p.stem for p in BAD.glob("*.recipe"))


def render_bad(name: str) -> DiagnosticError:
    path = BAD / f"{name}.recipe"
    with pytest.raises(DiagnosticError) as info:
        parse_recipe(path.read_text(encoding="utf-8"), file=path.name)
    return info.value


def test_there_are_at_least_30_bad_recipes():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_bad_recipe_snapshot(name):
    err = render_bad(name)
    rendered = render_all(err.diagnostics) + "\n"
    assert_snapshot(BAD / f"{name}.expected", rendered)


@pytest.mark.parametrize("name", CASES)
def test_every_diagnostic_is_actionable(name):
    """Every bad recipe yields errors with a code, a sentence, a help line and a location."""
    err = render_bad(name)
    assert err.diagnostics
    for diag in err.diagnostics:
        assert diag.is_error
        assert diag.code[:2] in ("R1", "R2"), diag.code
        assert diag.message.endswith((".", "?")), diag.message
        assert diag.help, diag.message
        assert diag.file == f"{name}.recipe"
        assert "pydantic" not in diag.message.lower()


def test_errors_are_collected_not_raised_one_at_a_time():
    codes = [d.code for d in render_bad("many_errors").diagnostics]
    assert codes == ["R202", "R201", "R202", "R202", "R202", "R201", "R108"]


def test_errors_come_in_source_order():
    lines = [d.line for d in render_bad("many_errors").diagnostics]
    assert lines == sorted(lines)


def test_rendering_is_capped_with_and_n_more():
    err = render_bad("capped_at_fifty")
    assert len(err.diagnostics) == 60
    text = render_all(err.diagnostics)
    assert text.count("error[R105]") == MAX_REPORTED
    assert text.endswith("... and 10 more")


@pytest.mark.parametrize(
    ("name", "line", "column"),
    [
        ("negative_lr", 6, 5),  # the `lr` statement inside train
        ("rank_zero", 9, 5),
        ("unknown_optimizer", 6, 15),  # the misspelt word itself
        ("steps_and_epochs", 6, 5),  # the second of the two
    ],
)
def test_positions_survive_into_validation(name, line, column):
    diag = render_bad(name).diagnostics[0]
    assert (diag.line, diag.column) == (line, column)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("unknown_statement_top", "train"),
        ("unknown_statement_in_block", "rank"),
        ("unknown_optimizer", "adamw8bit"),
        ("unknown_scheduler", "cosine"),
        ("unknown_sampler", "euler_a"),
        ("unknown_dataset_kind", "character"),
    ],
)
def test_did_you_mean(name, suggestion):
    message = render_bad(name).diagnostics[0].message
    assert f"Did you mean `{suggestion}`?" in message
