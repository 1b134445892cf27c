"""Issue 12 acceptance: a fuzz test that drives every compile-path command with hostile inputs.

For each drawn input file (mutated recipes, kohya TOML and SimpleTuner JSON with hostile values,
random bytes as a LoRA file), the commands check, fmt (and fmt --write on a copy), lint, compile
for each target, import kohya / simpletuner, migrate both ways, inspect and convert run in
process through `lorafile.cli.main`, and each must:

- return 0, 1 or 2 (argparse's usage error): no exception escapes, so no traceback;
- finish under a per-call alarm (a hang fails the test instead of stalling the suite);
- write nothing outside its output folder: the rest of the test's folder is unchanged.

Hypothesis, derandomized and bounded (black's fuzz test style), so CI sees the same inputs.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from hostile_inputs import INJECTIONS, hostile_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorafile.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures"
RECIPES = sorted((FIXTURES / "recipes").rglob("*.recipe"))[:6]
KOHYA = [FIXTURES / "kohya" / n for n in ("01_seed_style_lora.toml", "07_regularization.toml")]
SIMPLETUNER = FIXTURES / "simpletuner" / "json_plain_keys"
CALL_LIMIT_S = 60  # per command: a hang guard, far above what any call needs
SETTINGS = settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FRAGMENTS = ["{", "}", "[", "]", '"', "\\", "#", "\n", "..", "1e999", "-1", "nan", "inf",
             "99999999999999999999", "9" * 5000, "\\u0000", "\\u001b", '"\\n$(touch CANARY)"',
             "[" * 3000, "recipe", "dataset", "output", "train", "trigger \"   \""]  # fmt: skip


class CallTimedOut(Exception):
    """A command ran past CALL_LIMIT_S."""


@contextmanager
def _alarm(seconds: int):
    def expire(signum, frame):
        raise CallTimedOut(f"a command ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _call(argv: list[str]) -> int:
    with _alarm(CALL_LIMIT_S):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: a usage error is status 2
            code = exit_.code
    assert code in (0, 1, 2), (argv, code)
    return code


def _snapshot(root: Path, skip: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in root.rglob("*")
        if skip not in p.parents and p != skip
    }


def _commands(source: Path, out: Path) -> list[list[str]]:
    copy = out / f"fmt-{source.name}"
    shutil.copyfile(source, copy)
    lines = [
        ["check", source],
        ["fmt", source],
        ["fmt", "--write", copy],
        ["lint", source],
        ["import", "kohya", source, "-o", out / "imported-k.recipe"],
        ["import", "simpletuner", source],
        ["migrate", source, "--to", "simpletuner", "-o", out / "m-st", "--allow-lossy"],
        ["migrate", source, "--to", "kohya", "-o", out / "m-k", "--report", out / "r.md"],
        ["inspect", source],
        ["convert", source, "--to", "kohya", "-o", out / "c.safetensors"],
    ]
    for target in ("kohya", "simpletuner", "native"):
        lines.append(["compile", source, "-t", target, "-o", out / f"c-{target}", "--allow-lossy"])
    return [[str(word) for word in line] for line in lines]


def _drive(root: Path, name: str, data: bytes, capsys) -> None:
    """Every command on one input; the assertions of the module docstring."""
    inputs, out = root / "in", root / "out"
    inputs.mkdir(parents=True, exist_ok=True)
    out.mkdir(exist_ok=True)
    source = inputs / name
    source.write_bytes(data)
    before = _snapshot(root, out)
    beside = sorted(p.name for p in root.parent.iterdir())  # the folders next to this test's
    for argv in _commands(source, out):
        _call(argv)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, (argv, captured.err[-3000:])
    assert _snapshot(root, out) == before
    assert sorted(p.name for p in root.parent.iterdir()) == beside
    shutil.rmtree(root)


@st.composite
def mutated(draw, seeds: list[str]) -> str:
    """A seed file with a few hostile fragments spliced in at drawn positions."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 20))
        piece = draw(st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from(INJECTIONS),
                               hostile_text().map(json.dumps)))  # fmt: skip
        text = text[:at] + piece + text[at + cut :]
    return text


STRING_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"')


@st.composite
def substituted(draw, seeds: list[str]) -> str:
    """A seed file, still valid, with hostile text in place of some of its quoted strings."""
    text = draw(st.sampled_from(seeds))
    spans = [m.span() for m in STRING_LITERAL.finditer(text)]
    chosen = draw(st.lists(st.sampled_from(spans), min_size=1, max_size=3, unique=True))
    for start, end in sorted(chosen, reverse=True):
        text = text[:start] + json.dumps(draw(hostile_text())) + text[end:]
    return text


RECIPE_TEXTS = [p.read_text(encoding="utf-8") for p in RECIPES]
KOHYA_TEXTS = [p.read_text(encoding="utf-8") for p in KOHYA]


@SETTINGS
@given(
    text=st.one_of(mutated(RECIPE_TEXTS), substituted(RECIPE_TEXTS)),
    suffix=st.sampled_from([".recipe", ".txt"]),
)
def test_fuzz_recipes(tmp_path_factory, capsys, text, suffix):
    root = tmp_path_factory.mktemp("fuzz-recipe")
    _drive(root, "in" + suffix, text.encode("utf-8", "surrogatepass"), capsys)


@SETTINGS
@given(text=st.one_of(mutated(KOHYA_TEXTS), substituted(KOHYA_TEXTS)))
def test_fuzz_kohya_configs(tmp_path_factory, capsys, text):
    root = tmp_path_factory.mktemp("fuzz-kohya")
    _drive(root, "config.toml", text.encode("utf-8", "surrogatepass"), capsys)


def _json_values() -> st.SearchStrategy:
    scalars = st.one_of(
        hostile_text(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
    )
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


SIMPLETUNER_KEYS = sorted(json.loads((SIMPLETUNER / "config.json").read_text(encoding="utf-8")))
BACKEND_KEYS = ["instance_data_dir", "resolution", "repeats", "caption_strategy", "crop", "id"]


@SETTINGS
@given(
    config=st.dictionaries(
        st.one_of(st.sampled_from(SIMPLETUNER_KEYS), hostile_text()), _json_values(), max_size=5
    ),
    backend=st.dictionaries(st.sampled_from(BACKEND_KEYS), _json_values(), max_size=4),
)
def test_fuzz_simpletuner_configs(tmp_path_factory, capsys, config, backend):
    root = tmp_path_factory.mktemp("fuzz-st")
    base = json.loads((SIMPLETUNER / "config.json").read_text(encoding="utf-8"))
    entries = json.loads((SIMPLETUNER / "multidatabackend.json").read_text(encoding="utf-8"))
    entries[0] |= backend
    (root / "in").mkdir()
    (root / "in" / "multidatabackend.json").write_text(json.dumps(entries), encoding="utf-8")
    _drive(root, "config.json", json.dumps(base | config).encode(), capsys)


@SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=100)).map(
            lambda t: t[0].to_bytes(8, "little") + t[1]
        ),
        hostile_text().map(
            lambda s: (lambda h: len(h).to_bytes(8, "little") + h)(
                json.dumps({"__metadata__": {"k": s}, "w": s}).encode()
            )
        ),
    )
)
def test_fuzz_lora_files(tmp_path_factory, capsys, data):
    root = tmp_path_factory.mktemp("fuzz-lora")
    _drive(root, "in.safetensors", data, capsys)


@pytest.mark.parametrize(
    "text", [b"", b"\x00" * 64, b"\xff\xfe", b'recipe "x"\n' * 3, b"[" * 100_000]
)
def test_fixed_hostile_files(tmp_path, capsys, text):
    _drive(tmp_path / "fixed", "input.recipe", text, capsys)
