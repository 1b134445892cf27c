"""`lorafile convert IN --to kohya|diffusers -o OUT`: one LoRA layout to another."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a LoRA file between kohya and diffusers layouts, keeping its strength",
        description=(
            "Convert an SDXL LoRA/LoCon/LoHa .safetensors file to the kohya layout (original "
            "SDXL block names; ComfyUI, AUTOMATIC1111, sd-scripts) or the diffusers/peft layout "
            "(alpha in the metadata). Each module keeps its effective scale (alpha / rank). "
            "The input is never overwritten; pickle files are refused."
        ),
    )
    parser.add_argument("input", metavar="IN", help="the LoRA .safetensors file to read")
    parser.add_argument(
        "--to", required=True, choices=("kohya", "diffusers"), help="the layout to write"
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write")
    parser.add_argument(
        "--dtype",
        choices=("fp16", "bf16", "fp32"),
        default=None,
        help="cast the weights (default: keep the input's dtype)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="alpha for modules whose file carries none (default: alpha = rank, scale 1)",
    )
    parser.add_argument(
        "--allow-lossy",
        action="store_true",
        help="drop modules the target layout cannot hold instead of failing",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorafile.commands._output import refuse_folder_as_file, reporting_write_errors
    from lorafile.compiler.diagnostics import render_all

    refuse_folder_as_file(args.output)  # before torch is imported and the input is read
    from lorafile.runtime.lorafiles.convert import convert_file

    with reporting_write_errors(args.output):
        lora, bag = convert_file(
            args.input, args.output, args.to, args.dtype, args.alpha, args.allow_lossy
        )
    if len(bag):
        print(render_all(bag), file=sys.stderr)
    dropped = len(lora.modules) - lora.written
    note = f" ({dropped} dropped)" if dropped else ""
    print(
        f"Wrote {args.output}: {lora.written} module(s){note}, {lora.layout} layout to {args.to}."
    )
    return 0
