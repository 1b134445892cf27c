"""`lorafile migrate SRC --to simpletuner|kohya -o DIR`: move a config between trainers.

Reads SRC (a kohya or SimpleTuner config, detected from its content), writes the other trainer's
files into DIR and prints a migration report (backends/migrate.py): each setting next to what it
became, every change of meaning, every loss. Exits 1 when something is lost, unless
--allow-lossy; then the files are written anyway and the losses stay in the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lorafile.backends import migrate as mg
from lorafile.commands._kohya_source import add_kohya_source_options, kohya_source_options
from lorafile.commands._output import (
    refuse_file_as_folder,
    refuse_folder_as_file,
    reporting_write_errors,
)
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, printable
from lorafile.files import write_files, write_text_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "migrate",
        help="convert a kohya config to SimpleTuner or back, with a report of what changed",
        description="Read a kohya sd-scripts or SimpleTuner config, write the other trainer's "
        "files, and report every setting that changes meaning or is lost.",
    )
    p.add_argument(
        "source",
        type=Path,
        metavar="SRC",
        help="kohya config.toml, or SimpleTuner config.json/.toml/.env or its folder",
    )
    p.add_argument("--to", required=True, choices=sorted(mg.TRAINERS), help="target trainer")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for the target trainer's files (created if missing)",
    )
    p.add_argument(
        "--allow-lossy",
        action="store_true",
        help="write the files even when settings are lost (exit 0)",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="also write the migration report as Markdown to FILE",
    )
    add_kohya_source_options(p)
    p.add_argument(
        "--format",
        choices=("json", "toml"),
        default=None,
        help="SimpleTuner target: write config.json (default) or config.toml",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    options = kohya_source_options(args)
    refuse_file_as_folder(args.output)
    if args.report:
        refuse_folder_as_file(args.report)
    if args.format == "json" and args.to == "kohya":
        bag = DiagnosticBag()
        bag.error("T519", "kohya's --config_file is TOML only.", "drop --format json")
        raise DiagnosticError(bag.items)
    target_options = {"format": args.format} if args.format else None
    report, _, files, executable = mg.migrate(args.source, args.to, options, target_options)
    blocked = report.lossy and not args.allow_lossy
    if not blocked:
        with reporting_write_errors(args.output):
            write_files(args.output, files, executable)
        report.out_dir = str(args.output)
    # The report quotes values from a foreign config: no control character reaches the terminal.
    print("\n".join(printable(line) for line in mg.render(report).split("\n")))
    if args.report:
        with reporting_write_errors(args.report):
            write_text_atomic(args.report, mg.render(report, markdown=True))
    if blocked:
        print(
            f"error: {len(report.losses)} setting(s) would be lost; nothing was written. "
            "Pass --allow-lossy to write the files anyway.",
            file=sys.stderr,
        )
        return 1
    return 0
