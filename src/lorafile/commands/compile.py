"""`lorafile compile FILE --target kohya|simpletuner|native -o DIR`: write a trainer's files.

Reads a recipe (or a kohya / SimpleTuner config: the format is detected from the content),
asks the target backend for its files, and writes them into DIR. Settings the target cannot
express are T5xx errors unless --allow-lossy. Files are written atomically (a temporary file,
then a rename) and only the backend's own file names are touched: other files in DIR stay.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lorafile.commands._output import refuse_file_as_folder, reporting_write_errors
from lorafile.compiler.diagnostics import DiagnosticBag, render_all, summary_line
from lorafile.files import write_files

TARGETS = ("kohya", "simpletuner", "native")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compile",
        help="write a trainer's config files (kohya, SimpleTuner, native plan) from a recipe",
        description=(
            "Compile a recipe into the files a trainer runs: kohya sd-scripts (config.toml, "
            "dataset.toml, sample_prompts.txt, train.sh), SimpleTuner (config.json, "
            "multidatabackend.json) or the native trainer's plan. A setting the target cannot "
            "express is an error unless --allow-lossy. Exit status 1 on errors."
        ),
    )
    p.add_argument("file", type=Path, help="a .recipe, or a kohya / SimpleTuner config")
    p.add_argument("--target", "-t", required=True, choices=TARGETS, help="the trainer")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for the files (created if missing; other files are kept)",
    )
    p.add_argument(
        "--allow-lossy",
        action="store_true",
        help="write the files even when the target drops settings (reported as warnings)",
    )
    p.add_argument(
        "--format",
        choices=("toml", "json"),
        default=None,
        help="main config file format, for targets that offer both (SimpleTuner)",
    )
    p.add_argument(
        "--from",
        dest="from_",
        choices=("recipe", "kohya", "simpletuner"),
        default=None,
        help="the input's format, when detection guesses wrong",
    )
    p.add_argument(
        "--diagnostics-format",
        choices=("text", "json"),
        default="text",
        help="how to print diagnostics",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from lorafile.backends import base

    refuse_file_as_folder(args.output)
    recipe, loaded_diagnostics = _load(args.file, args.from_)
    backend = base.get(args.target, allow_lossy=args.allow_lossy)
    bag = DiagnosticBag(file=str(args.file))
    bag.extend(loaded_diagnostics)
    if args.format:
        _set_format(backend, args.format, bag)
    compiled = None if bag.has_errors else backend.write(recipe, bag)
    _print_diagnostics(bag, args.diagnostics_format)
    if compiled is None or bag.has_errors:
        print("error: nothing was written.", file=sys.stderr)
        return 1
    with reporting_write_errors(args.output):
        written = write_files(args.output, compiled.files, compiled.executable)
    for path in written:
        print(path)
    return 0


def _load(path: Path, from_: str | None):
    """The recipe to compile, from a recipe or a kohya / SimpleTuner config."""
    from lorafile.backends.load import load_input

    loaded = load_input(path, from_=from_)
    return loaded.recipe, loaded.diagnostics


def _set_format(backend, fmt: str, bag: DiagnosticBag) -> None:
    formats = getattr(backend, "formats", ("toml",) if backend.name == "kohya" else ())
    if fmt not in formats:
        bag.error(
            "T519",
            f"The {backend.name} target cannot write its config as {fmt}.",
            f"use --format {' or '.join(formats)}" if formats else "drop --format",
        )
        return
    if hasattr(backend, "options"):
        backend.options["format"] = fmt


def _print_diagnostics(bag: DiagnosticBag, fmt: str) -> None:
    if not bag.items:
        return
    if fmt == "json":
        print(json.dumps([d.to_dict() for d in bag.items], indent=2), file=sys.stderr)
        return
    print(render_all(bag.items), file=sys.stderr)
    print(summary_line(bag.items), file=sys.stderr)
