"""`lorafile import kohya|simpletuner PATH [-o OUT.recipe]`: a trainer config as a recipe.

Reads the config with the trainer's backend (which reports every key the trainer would ignore
or reject, with file:line), prints the recipe in canonical form (or writes it to -o), and prints
the diagnostics to stderr. Settings without a recipe equivalent stay in the recipe's
pass-through block, so exporting to the same trainer loses nothing. Exit status 1 on errors
(the recipe is still printed: it is what lorafile understood).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lorafile.commands._kohya_source import add_kohya_source_options, kohya_source_options
from lorafile.commands._output import refuse_folder_as_file, reporting_write_errors
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, render_all, summary_line
from lorafile.files import write_text_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import",
        help="read a kohya or SimpleTuner config into a recipe",
        description=(
            "Read a kohya sd-scripts config (config.toml, its dataset config, sample prompts "
            "and <repeats>_<class> folders) or a SimpleTuner config and print the recipe it "
            "means. Every setting the trainer would ignore or reject is reported."
        ),
    )
    p.add_argument("trainer", choices=("kohya", "simpletuner"), help="the config's trainer")
    p.add_argument("path", type=Path, help="the config file (or its folder)")
    add_kohya_source_options(p)
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT.recipe",
        help="write the recipe here instead of printing it",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from lorafile.backends import base
    from lorafile.compiler.format import format_recipe

    options = kohya_source_options(args)
    if args.output:
        refuse_folder_as_file(args.output)
    bag = DiagnosticBag(file=str(args.path))
    try:
        recipe = base.get(args.trainer).read(args.path, bag, **options)
    except DiagnosticError as err:
        bag.merge(err.diagnostics)
        _report(bag)
        return 1
    text = format_recipe(recipe)
    if args.output:
        with reporting_write_errors(args.output):
            write_text_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    _report(bag)
    return 1 if bag.has_errors else 0


def _report(bag: DiagnosticBag) -> None:
    if bag.items:
        print(render_all(bag.items), file=sys.stderr)
        print(summary_line(bag.items), file=sys.stderr)
