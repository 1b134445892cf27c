"""`lorafile card TARGET -o README.md [--comfyui workflow.json]`: a model card for a trained LoRA."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "card",
        help="write a Hugging Face model card (and a ComfyUI workflow) for a trained LoRA",
        description=(
            "Write a Hugging Face model card for a native run folder or a LoRA file: YAML front "
            "matter (base_model, tags, a license placeholder to fill, instance_prompt = the "
            "trigger, widget images from the eval report or the last samples), how to use the "
            "LoRA in diffusers, ComfyUI and AUTOMATIC1111, the training settings from the recipe "
            "and the file's ss_* metadata, and the dataset and evaluation summaries when `prep` "
            "and `eval` reports exist. --comfyui also writes a ComfyUI workflow (API format)."
        ),
    )
    parser.add_argument(
        "target", metavar="TARGET", help="a run folder (lorafile train -o) or a LoRA file"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="README.md", help="the card to write"
    )
    parser.add_argument(
        "--comfyui", metavar="WORKFLOW.json", help="also write a ComfyUI API-format workflow"
    )
    parser.add_argument(
        "--prep", metavar="FILE", help="the prep JSON report (default: looked for beside the run)"
    )
    parser.add_argument(
        "--eval", metavar="FILE", help="the eval report.json (default: looked for beside the run)"
    )
    parser.add_argument(
        "--base-model",
        metavar="HF_ID",
        help="the base model's Hugging Face id for the card (default: stabilityai/stable-diffusion-xl-base-1.0)",
    )
    parser.add_argument("--trigger", help="the trigger word, when the run's recipe is not at hand")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorafile.commands._output import refuse_folder_as_file, reporting_write_errors
    from lorafile.compiler.diagnostics import render_all
    from lorafile.runtime.lorafiles.card import write_card

    refuse_folder_as_file(args.output)
    with reporting_write_errors(args.output):
        result = write_card(
            args.target,
            args.output,
            comfyui=args.comfyui,
            prep=args.prep,
            eval_report=args.eval,
            base_model=args.base_model,
            trigger=args.trigger,
            force=args.force,
        )
    if len(result.warnings):
        print(render_all(result.warnings), file=sys.stderr)
    extra = f", sections: {', '.join(result.sections)}" if result.sections else ""
    print(f"Wrote {result.path}: {result.widgets} widget image(s){extra}.")
    if result.comfyui:
        print(f"Wrote {result.comfyui}: ComfyUI workflow (API format).")
    return 0
