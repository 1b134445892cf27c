"""`lorafile plan R.recipe`: show the native trainer's plan (every setting resolved)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorafile.files import real_path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="show what `lorafile train` would do: steps, buckets, memory measures, files",
        description=(
            "Resolve a recipe for the native trainer: defaults filled in, steps computed from "
            "epochs, the bucket table, the memory measures chosen and the hashed file list."
        ),
    )
    p.add_argument("input", type=Path, help="a .recipe file (or a plan.json to print)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the plan as JSON (what compile --target native writes)",
    )
    p.set_defaults(func=run)


def load_plan(path: Path) -> dict:
    """The plan for a recipe or trainer config (built now) or a plan.json (read as is).

    Warnings are printed to stderr; errors raise DiagnosticError.
    """
    from lorafile.compiler.diagnostics import DiagnosticBag, fail, render_all
    from lorafile.runtime.train.plan import build_plan, plan_problem

    if path.suffix == ".json" and _is_plan(path):
        plan = json.loads(path.read_text(encoding="utf-8"))
        why = plan_problem(plan)
        if why:
            raise fail(
                "R110",
                f"`{path}` is not a plan that lorafile wrote: {why}.",
                "write it again with `lorafile compile --target native`, or give the recipe",
            )
        return plan
    recipe = _load_recipe(path)
    bag = DiagnosticBag(file=str(path))
    plan = build_plan(recipe, bag, base_dir=real_path(path).parent)
    bag.raise_if_errors()  # the command line prints every diagnostic, warnings included
    if bag.items:
        print(render_all(bag.items), file=sys.stderr)
    return plan


def _is_plan(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "lorafile_plan" in data


def _load_recipe(path: Path):
    try:
        from lorafile.backends.load import load_input
    except ImportError:  # the loader is optional: a .recipe file parses without it
        from lorafile.compiler.parse import parse_recipe

        return parse_recipe(path.read_text(encoding="utf-8"), file=str(path))
    return load_input(path).recipe


def run(args: argparse.Namespace) -> int:
    from lorafile.runtime.train.plan import describe_plan

    plan = load_plan(args.input)
    print(json.dumps(plan, indent=2) if args.json else describe_plan(plan))
    return 0
