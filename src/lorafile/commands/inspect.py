"""`lorafile inspect FILE`: what a LoRA file holds, in plain words."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show a LoRA file's layout, algorithms, ranks/alphas, coverage, metadata, problems",
        description=(
            "Read an SDXL LoRA .safetensors file (kohya, diffusers/peft, SimpleTuner LyCORIS or "
            "lorafile) and report its layout, the algorithm of each module (LoRA, LoCon, LoHa, "
            "LoKr), ranks, alphas and the effective scale, which parts of the UNet and text "
            "encoders it covers, its metadata in plain words, and problems found."
        ),
    )
    parser.add_argument("file", help="the LoRA .safetensors file")
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people (default), json for tools",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorafile.compiler.diagnostics import printable
    from lorafile.runtime.lorafiles.inspect import inspect_file, render_text

    report = inspect_file(args.file)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        # Metadata comes from whoever made the file: no escape sequence reaches the terminal.
        text = render_text(report)
        print("\n".join(printable(line) for line in text.split("\n")), end="")
    return 0
