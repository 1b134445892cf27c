"""`lorafile check FILE`: parse and validate a recipe (or a trainer config), report every problem."""

from __future__ import annotations

import json
from pathlib import Path

from lorafile.backends.load import KINDS, load_input
from lorafile.compiler.diagnostics import (
    Diagnostic,
    DiagnosticError,
    printable,
    render_all,
    summary_line,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help="parse and validate a recipe, kohya config or SimpleTuner config",
        description=(
            "Parse and validate FILE and print every problem at once, each with its code, "
            "location and a help line. FILE is a .recipe, a kohya config TOML or a SimpleTuner "
            "config (json/toml/env, or the legacy YAML); the format is detected from the "
            "content. Exit status 0 when there is no error (warnings allowed), 1 otherwise."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the recipe or trainer config to check")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people (default); json: a list of {code, severity, message, help, "
        "file, line, column}",
    )
    p.add_argument(
        "--from",
        dest="from_",
        choices=KINDS,
        default=None,
        help="the file's format, when detection guesses wrong",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        loaded = load_input(args.file, from_=args.from_)
    except DiagnosticError as err:
        diagnostics, name = err.diagnostics, None
    else:
        diagnostics, name = loaded.diagnostics, loaded.recipe.name
    failed = any(d.is_error for d in diagnostics)
    if args.format == "json":
        print(json.dumps([d.to_dict() for d in diagnostics], indent=2))
    else:
        _print_text(args.file, diagnostics, name)
    return 1 if failed else 0


def _print_text(path: Path, diagnostics: list[Diagnostic], name: str | None) -> None:
    if diagnostics:
        print(render_all(diagnostics))
        print()
    if name is not None and not diagnostics:
        print(f'{printable(str(path))}: ok (recipe "{printable(name)}")')
    else:
        print(f"{printable(str(path))}: {summary_line(diagnostics)}")
