"""Any input a command takes (recipe, kohya config, SimpleTuner config) to one `Recipe`.

`load_input` detects the format from the file's content (the name only breaks ties), parses
recipes itself and hands trainer configs to their backend's reader, so `check`, `lint`,
`compile`, `plan` and `migrate` all accept the same inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.backends.textio import read_input_text
from lorafile.compiler.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError
from lorafile.compiler.parse import SourceMap, parse_into
from lorafile.files import is_dir
from lorafile.spec.models import Recipe

KINDS = ("recipe", "kohya", "simpletuner")

_RECIPE_LINE = re.compile(
    r'^\s*(recipe\s+"|(base|dataset|regularization)\s+\S.*\S|(train|hardware)\s*\{)', re.M
)
_TOML_LINE = re.compile(r"^\s*(\[[^\]\n]+\]|[A-Za-z0-9_.\-\"']+\s*=)", re.M)
_ENV_LINE = re.compile(r"^\s*(export\s+)?[A-Z][A-Z0-9_]*=", re.M)
_YAML_LINE = re.compile(r"^[A-Za-z_][\w\-]*:(\s|$)", re.M)
# Keys only SimpleTuner's config uses (its TOML may spell them with the CLI's leading `--`).
_SIMPLETUNER_KEY = re.compile(
    r"""^\s*["']?(--)?(model_family|model_type|data_backend_config)""", re.M
)


@dataclass
class Loaded:
    """A valid recipe read from `path`, with what was found on the way."""

    recipe: Recipe
    kind: str
    """`recipe`, `kohya` or `simpletuner`."""
    path: Path
    diagnostics: list[Diagnostic] = field(default_factory=list)
    """Warnings and notes (errors raise instead)."""
    source_map: SourceMap = field(default_factory=SourceMap)
    """Field spans; empty for trainer configs."""
    text: str | None = None
    """The source text of a recipe file."""


def load_input(path: str | Path, from_: str | None = None, **options) -> Loaded:
    """Read a recipe or a trainer config; raise `DiagnosticError` listing every error found.

    `from_` forces the format (`recipe`, `kohya`, `simpletuner`); otherwise it is detected
    from the content. `options` go to the backend reader (e.g. kohya's `dataset_config`).
    """
    path = Path(path)
    bag = DiagnosticBag(file=str(path))
    kind = from_ or detect_kind(path, bag)
    if kind == "recipe":
        return _load_recipe(path, bag)
    return _load_config(path, kind, bag, options)


def read_text(path: Path, bag: DiagnosticBag) -> str:
    """The file's text (UTF-8, BOM allowed); R110 when it cannot be read."""
    if is_dir(path):
        _fail(bag, f"`{path}` is a folder, not a file.", "pass the recipe or config file itself")
    return read_input_text(
        path,
        bag,
        "R110",
        "check the path and its permissions",
        utf8_help="save the file as UTF-8, or check that it is the recipe you meant",
    )


def _fail(bag: DiagnosticBag, message: str, help: str) -> None:
    bag.error("R110", message, help)
    raise DiagnosticError(bag.items)


def detect_kind(path: Path, bag: DiagnosticBag) -> str:
    """`recipe`, `kohya` or `simpletuner`, from the content first and the name second."""
    if is_dir(path):
        return _detect_folder(path, bag)
    suffix = path.suffix.lower()
    if suffix == ".recipe":
        return "recipe"
    text = read_text(path, bag)
    stripped = text.lstrip()
    if suffix == ".json" or stripped.startswith("{"):
        return "simpletuner"
    if suffix in (".yaml", ".yml", ".env") or _ENV_LINE.search(text):
        return "simpletuner"
    if _TOML_LINE.search(text) and not _RECIPE_LINE.search(text):
        return "simpletuner" if _SIMPLETUNER_KEY.search(text) else "kohya"
    if _RECIPE_LINE.search(text) or not _YAML_LINE.search(text):
        return "recipe"
    return "simpletuner"


def _detect_folder(path: Path, bag: DiagnosticBag) -> str:
    names = {p.name for p in path.iterdir()}
    if names & {"config.json", "config.env", "multidatabackend.json"}:
        return "simpletuner"
    if "config.toml" in names:
        return detect_kind(path / "config.toml", bag)
    _fail(
        bag,
        f"The folder `{path}` holds no recipe or trainer config.",
        "pass the file itself: a .recipe, kohya config.toml, or SimpleTuner config.json",
    )
    raise AssertionError("unreachable")  # pragma: no cover


def _load_recipe(path: Path, bag: DiagnosticBag) -> Loaded:
    text = read_text(path, bag)
    bag.source = text
    recipe, smap = parse_into(text, bag)
    if recipe is None or bag.has_errors:
        raise DiagnosticError(bag.items)
    return Loaded(recipe, "recipe", path, list(bag.items), smap, text)


def _load_config(path: Path, kind: str, bag: DiagnosticBag, options: dict) -> Loaded:
    if kind not in KINDS:
        bag.error("R111", f"Unknown input format `{kind}`.", f"use one of: {', '.join(KINDS)}")
        raise DiagnosticError(bag.items)
    from lorafile.backends import base

    if kind not in base.names():
        bag.error(
            "R111",
            f"Reading {kind} configs is not available in this build.",
            "convert the config to a recipe by hand, or pass a .recipe file",
        )
        raise DiagnosticError(bag.items)
    try:
        recipe = base.get(kind).read(path, bag, **options)
    except DiagnosticError as err:
        bag.merge(err.diagnostics)
        raise DiagnosticError(bag.items) from None
    if recipe is None or bag.has_errors:
        raise DiagnosticError(bag.items)
    return Loaded(recipe, kind, path, list(bag.items))
