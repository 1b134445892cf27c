"""`lorafile fmt FILE...`: print recipes in canonical form, or rewrite them in place."""

from __future__ import annotations

import difflib
import shlex
import sys
from pathlib import Path

from lorafile.backends.load import detect_kind, read_text
from lorafile.commands._output import reporting_write_errors
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, printable, render_all
from lorafile.compiler.format import format_source
from lorafile.files import write_text_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fmt",
        help="print a recipe in canonical form, or rewrite it (--write) or check it (--check)",
        description=(
            "Format recipes: a fixed statement order, four-space blocks, defaults left out, "
            "comments kept. Without options the canonical text is printed. A recipe with errors "
            "is never rewritten; its errors are printed and the exit status is 1."
        ),
    )
    p.add_argument(
        "files", type=Path, nargs="+", metavar="FILE", help="recipe files; `-` reads stdin"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--write",
        action="store_true",
        help="rewrite each file in place (atomically: a temporary file, then a rename)",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="change nothing; print a diff and exit 1 when a file is not in canonical form",
    )
    p.add_argument(
        "--from",
        dest="from_",
        choices=("recipe", "kohya", "simpletuner"),
        default=None,
        help="the input's format, when detection guesses wrong (default: detected)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    status = 0
    for path in args.files:
        try:
            status = max(status, _one(path, args))
        except DiagnosticError as err:
            print(render_all(err.diagnostics), file=sys.stderr)
            status = 1
    return status


def _one(path: Path, args) -> int:
    if str(path) == "-":  # editor integration: recipe on stdin, canonical text on stdout
        text = sys.stdin.read()
        formatted = format_source(text, file="<stdin>")
        if args.check:
            return int(formatted != text)
        sys.stdout.write(formatted)
        return 0
    bag = DiagnosticBag(file=str(path))
    kind = getattr(args, "from_", None) or detect_kind(path, bag)
    if kind != "recipe":
        return _trainer_config(path, kind, args, bag)
    text = read_text(path, bag)
    formatted = format_source(text, file=str(path))
    if args.check:
        if formatted == text:
            return 0
        diff = difflib.unified_diff(
            text.splitlines(True), formatted.splitlines(True), f"{path}", f"{path} (formatted)"
        )
        sys.stdout.writelines(diff)
        print(f"would reformat {path}", file=sys.stderr)
        return 1
    if args.write:
        if formatted != text:
            with reporting_write_errors(path):
                write_text_atomic(path, formatted)
            print(f"reformatted {path}", file=sys.stderr)
        return 0
    sys.stdout.write(formatted)
    return 0


def _trainer_config(path: Path, kind: str, args, bag: DiagnosticBag) -> int:
    """A kohya / SimpleTuner config: print the canonical recipe it means; never rewrite it."""
    if args.write or args.check:
        bag.error(
            "R111",
            f"`{path}` is a {kind} config, not a recipe, so it has no canonical recipe text "
            "to check or rewrite in place.",
            f"save its recipe with `lorafile import {kind} {shlex.quote(str(path))} -o "
            "NAME.recipe`, "
            "then format that",
        )
        raise DiagnosticError(bag.items)
    from lorafile.backends.load import load_input
    from lorafile.compiler.format import format_recipe

    loaded = load_input(path, from_=kind)
    if loaded.diagnostics:
        print(render_all(loaded.diagnostics), file=sys.stderr)
    sys.stdout.write(format_recipe(loaded.recipe))
    print(
        f"note: printed the recipe that the {kind} config `{printable(str(path))}` means; "
        f"`lorafile import {kind} {shlex.quote(str(path))} -o NAME.recipe` saves it.",
        file=sys.stderr,
    )
    return 0
