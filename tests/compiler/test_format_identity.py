"""The identity corpus: format is the identity on canonical recipes, idempotent on the rest.

tests/fixtures/recipes/*.recipe are canonical (what `lorafile fmt` prints); loose/ holds
recipes as people write them (comments, defaults spelt out, any order, `16 GiB`), including
the three shared example recipes.
"""

from __future__ import annotations

import pytest

from lorafile.compiler.format import format_recipe
from lorafile.compiler.parse import parse_recipe
from repo_paths import TESTS

CORPUS = TESTS / "fixtures" / "recipes"
CANONICAL = sorted(CORPUS.glob("*.recipe"))
LOOSE = sorted((CORPUS / "loose").glob("*.recipe"))


def test_corpus_is_large_enough():
    assert len(CANONICAL) >= 25
    assert len(LOOSE) >= 4


@pytest.mark.parametrize("path", CANONICAL, ids=lambda p: p.stem)
def test_format_is_identity_on_canonical_input(path):
    text = path.read_text(encoding="utf-8")
    assert format_recipe(parse_recipe(text, file=path.name)) == text


@pytest.mark.parametrize("path", LOOSE, ids=lambda p: p.stem)
def test_format_is_idempotent_and_keeps_meaning(path):
    text = path.read_text(encoding="utf-8")
    recipe = parse_recipe(text, file=path.name)
    once = format_recipe(recipe)
    assert once != text, "a loose fixture should not already be canonical"
    assert parse_recipe(once) == recipe
    assert format_recipe(parse_recipe(once)) == once


def test_corpus_covers_every_statement():
    """Each statement of every block appears in at least one fixture."""
    from lorafile.compiler.statements import RAW_TABLES, TABLES

    words = set()
    for path in CANONICAL + LOOSE:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                words.add(line.split()[0])
    expected = {name for table, defs in TABLES.items() if table not in RAW_TABLES for name in defs}
    assert expected - words == set()
