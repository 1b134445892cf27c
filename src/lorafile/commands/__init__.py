"""Subcommands of the `lorafile` CLI, one module each, and the dispatcher that runs them.

Each subcommand lives in its own module under `lorafile.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a function taking the parsed
arguments and returning an exit code. Modules are discovered, so adding a command is adding a
file. Command modules import torch/diffusers only inside their `run` functions: the compile path
(check, fmt, compile, import, migrate, lint) must answer in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from lorafile import __version__
from lorafile.compiler.diagnostics import DiagnosticError, render_all

# The order commands are listed in `lorafile --help`; discovered modules not named here follow.
COMMAND_ORDER = (
    "check",
    "fmt",
    "lint",
    "compile",
    "plan",
    "import_",
    "migrate",
    "prep",
    "caption",
    "train",
    "eval",
    "demo",
    "inspect",
    "convert",
    "merge",
    "resize",
    "card",
)


def command_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    ordered = [name for name in COMMAND_ORDER if name in found]
    return ordered + sorted(found - set(ordered))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorafile",
        description=(
            "One recipe for SDXL LoRA training: check and format recipes, lint them against a "
            "VRAM budget, compile them to kohya sd-scripts, SimpleTuner or the native trainer, "
            "and import or migrate existing trainer configs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"lorafile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(f"lorafile.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except DiagnosticError as err:
        print(render_all(err.diagnostics), file=sys.stderr)
        return 1
    except ModuleNotFoundError as err:  # a package of the `train` extra: T569 says which extra
        from lorafile.runtime.environment import as_missing_extra

        missing = as_missing_extra(err, args.command)
        if missing is None:
            raise
        print(render_all(missing.diagnostics), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`lorafile check x | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
