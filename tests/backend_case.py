"""A sqlglot-style test base for backends: each target's tests become lists of one-line cases.

    class TestKohya(BackendCase):
        backend = "kohya"

        def test_seed(self):
            self.assert_identity(FIXTURES / "seed.toml")
            self.assert_all(recipe, write={"kohya": {"config.toml": {"network_dim": 16}}})

`assert_identity(config)`: reading a trainer config and writing it back gives a config that means
the same run (`assert_same_effect`, overridden per backend, compares what the trainer would do),
and reading the rewrite gives the same recipe. `assert_all(recipe, write=..., read=...)`: the
recipe writes files containing the expected values, and the given configs read as the recipe.
Backend-generic: the kohya and SimpleTuner tests both use it.
"""

from __future__ import annotations

import json
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from lorafile.backends.base import get
from lorafile.compiler.diagnostics import Diagnostic, DiagnosticBag
from lorafile.spec.models import Recipe


class BackendCase:
    backend: str = ""
    """Registry name of the backend under test."""
    entry_file: str = "config.toml"
    """The file `read` is pointed at inside a folder of written files."""

    # -- plumbing -------------------------------------------------------------------------------

    def write(self, recipe: Recipe, allow_lossy: bool = False) -> tuple[dict[str, str], list]:
        bag = DiagnosticBag()
        compiled = get(self.backend, allow_lossy=allow_lossy).write(recipe, bag)
        return compiled.files, list(bag)

    def read(self, path: Path | str, **options) -> tuple[Recipe, list[Diagnostic]]:
        bag = DiagnosticBag()
        recipe = get(self.backend).read(Path(path), bag, **options)
        return recipe, list(bag)

    def read_files(self, files: Mapping[str, str], **options) -> tuple[Recipe, list[Diagnostic]]:
        with tempfile.TemporaryDirectory() as folder:
            root = materialize(files, Path(folder))
            return self.read(root / self.entry_file, **options)

    @staticmethod
    def errors(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
        return [d for d in diagnostics if d.is_error]

    # -- assertions -----------------------------------------------------------------------------

    def assert_identity(self, config: Path | str, **options) -> Recipe:
        """Read `config`, write it, read the result: same recipe, same run."""
        first, _ = self.read(config, **options)
        files, diagnostics = self.write(first)
        assert not self.errors(diagnostics), "\n".join(map(str, diagnostics))
        second, _ = self.read_files(files)
        assert second == first, _diff(first, second)
        with tempfile.TemporaryDirectory() as folder:
            root = materialize(files, Path(folder))
            self.assert_same_effect(Path(config), options, root)
        return first

    def assert_same_effect(self, original: Path, options: dict, written: Path) -> None:
        """Backend hook: the original config and the written folder mean the same run."""

    def assert_all(
        self,
        recipe: Recipe,
        write: Mapping[str, Mapping[str, object]] | None = None,
        read: Mapping[str, Path | str | tuple[Path | str, dict]] | None = None,
    ) -> None:
        """`write={backend: {file: expected}}`: expected is the exact text, a dict of values the
        parsed file must contain (nested tables flattened to `section.key`), or a predicate.
        `read={backend: config or (config, options)}`: reading it gives `recipe`."""
        for backend, expected_files in (write or {}).items():
            assert backend == self.backend, f"this case tests {self.backend}, not {backend}"
            files, diagnostics = self.write(recipe)
            assert not self.errors(diagnostics), "\n".join(map(str, diagnostics))
            for name, expected in expected_files.items():
                assert name in files, f"{name} not written; got {sorted(files)}"
                check_file(name, files[name], expected)
        for backend, source in (read or {}).items():
            assert backend == self.backend, f"this case tests {self.backend}, not {backend}"
            path, options = source if isinstance(source, tuple) else (source, {})
            got, _ = self.read(path, **options)
            assert got == recipe, _diff(recipe, got)


def materialize(files: Mapping[str, str], folder: Path) -> Path:
    """Write backend output into `folder` (as `lorafile compile -o` would) and return it."""
    for name, text in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return folder


def parse_file(name: str, text: str) -> dict:
    if name.endswith(".toml"):
        return tomllib.loads(text)
    if name.endswith(".json"):
        return json.loads(text)
    raise AssertionError(f"no parser for {name}; compare its text instead")


def flatten(doc: Mapping, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in doc.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_file(name: str, text: str, expected: object) -> None:
    if isinstance(expected, str):
        assert text == expected, f"{name} differs:\n{text}"
    elif isinstance(expected, Mapping):
        parsed = parse_file(name, text)
        flat = {**flatten(parsed), **_leaf_keys(parsed)}
        for key, value in expected.items():
            assert key in flat, f"{name} has no `{key}`; it has {sorted(flat)}"
            assert flat[key] == value and type(flat[key]) is type(value), (
                f"{name}: `{key}` is {flat[key]!r}, expected {value!r}"
            )
    elif isinstance(expected, Callable):
        assert expected(text), f"{name} fails its check:\n{text}"


def _leaf_keys(doc: Mapping) -> dict:
    """Keys without their section prefix, for formats whose sections are cosmetic."""
    out: dict = {}
    for _key, value in doc.items():
        if isinstance(value, Mapping):
            out.update({k: v for k, v in value.items() if not isinstance(v, Mapping)})
    return out


def _diff(a: Recipe, b: Recipe) -> str:
    left, right = a.model_dump(), b.model_dump()
    lines = [f"  {k}: {left[k]!r}\n  != {right[k]!r}" for k in left if left[k] != right[k]]
    return "recipes differ:\n" + "\n".join(lines)
