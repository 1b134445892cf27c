"""Fuzz: random bytes and random mutations of valid recipes raise only DiagnosticError.

2,400 examples in all (500 bytes, 500 text, 1,400 mutations). Whatever still parses after a mutation must also survive a format
round trip, and `fmt` (comments kept) must be idempotent on it: the fuzzer checks the
formatter too.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.compiler.format import format_recipe, format_source
from lorafile.compiler.parse import parse_recipe
from repo_paths import TESTS

CORPUS = TESTS / "fixtures" / "recipes"
SEEDS = [p.read_text(encoding="utf-8") for p in sorted(CORPUS.rglob("*.recipe"))]
# Fragments that steer mutations into interesting places: structure, units, keywords.
FRAGMENTS = [
    "{",
    "}",
    "[",
    "]",
    ",",
    '"',
    "\\",
    "#",
    "\n",
    " ",
    "=",
    "-1",
    "0",
    "1e999",
    "1e-4",
    "5%",
    "150%",
    "1:0",
    "0:1",
    "..",
    "2048..256",
    "12GB",
    "12",
    "8x8",
    "99999999999999999999",
    "on",
    "off",
    "steps",
    "epochs",
    "every",
    "keep",
    "warmup",
    "cosine",
    "polynomial",
    "lr",
    "rank",
    "train",
    "dataset",
    "passthrough kohya {",
    "sample every 1 steps {",
    '"\\ud800"',
    "nan",
    "inf",
    "\x00",
    "\r",
    "\u2028",
    "é",
    "  # note",
    "\n    # note\n",
    "{}",
]
SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check(text: str) -> None:
    """Parsing either works (and round-trips) or raises DiagnosticError with real diagnostics."""
    try:
        recipe = parse_recipe(text)
    except DiagnosticError as err:
        assert err.diagnostics
        assert all(d.code and d.message for d in err.diagnostics)
        str(err)
        return
    assert parse_recipe(format_recipe(recipe)) == recipe
    formatted = format_source(text)  # with its comments, as `lorafile fmt` prints it
    assert format_source(formatted) == formatted


@settings(SETTINGS, max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    check(data.decode("utf-8", errors="replace"))


@settings(SETTINGS, max_examples=500)
@given(st.text(max_size=200))
def test_random_text(text):
    check(text)


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "copy", "swap"]))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(FRAGMENTS)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif op == "copy":
            start = draw(st.integers(0, len(text)))
            text = text[:at] + text[start : start + draw(st.integers(1, 30))] + text[at:]
        else:
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@settings(SETTINGS, max_examples=1400)
@given(mutated())
def test_mutations_of_valid_recipes(text):
    check(text)
