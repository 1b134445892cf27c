"""`lorafile merge LORA[:S] ... [--base MODEL] -o OUT`: fold LoRAs into a checkpoint, or into one LoRA."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge LoRA files into a base checkpoint (--base) or into one LoRA file",
        description=(
            "With --base: fold LoRA/LoCon/LoHa files (any layout `convert` reads) into a "
            "single-file SDXL checkpoint in the original layout (ComfyUI, A1111), text encoders "
            "included, streaming one tensor at a time; the metadata records each LoRA's file "
            "name, sha256 and strength. Without --base: merge LoRA files into one LoRA, by "
            "concatenating their ranks (exact) or, with --rank, by SVD (lossy; the retained "
            "energy is reported)."
        ),
    )
    parser.add_argument(
        "loras",
        nargs="+",
        metavar="LORA[:STRENGTH]",
        help="LoRA files, each with an optional strength (default 1)",
    )
    parser.add_argument(
        "--base", metavar="MODEL", help="the single-file SDXL .safetensors to merge into"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the .safetensors file to write"
    )
    parser.add_argument(
        "--dtype",
        choices=("fp16", "bf16", "fp32"),
        default=None,
        help="the output's float dtype (default: the base's, or the first LoRA's)",
    )
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="LoRA + LoRA only: merge by SVD to this rank instead of concatenating ranks",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="report format")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorafile.commands._output import refuse_folder_as_file, reporting_write_errors
    from lorafile.compiler.diagnostics import fail, render_all
    from lorafile.runtime.lorafiles.merge import parse_lora_spec

    refuse_folder_as_file(args.output)  # before gigabytes are read and written
    specs = [parse_lora_spec(text) for text in args.loras]
    if args.base:
        if args.rank is not None:
            raise fail(
                "F725",
                "--rank applies to merging LoRAs into one LoRA, not into --base.",
                "Drop --rank, or drop --base to write a LoRA file.",
            )
        with reporting_write_errors(args.output):
            report, bag = _into_base(args, specs)
    else:
        with reporting_write_errors(args.output):
            report, bag = _into_lora(args, specs)
    if len(bag):
        print(render_all(bag), file=sys.stderr)
    print(json.dumps(report, indent=2) if args.format == "json" else _text(report))
    return 0


def _into_base(args, specs):
    from lorafile.runtime.lorafiles.merge import merge_into_base

    result = merge_into_base(args.base, specs, args.output, args.dtype)
    report = {
        "output": str(result.path),
        "base": args.base,
        "loras": result.loras,
        "weights_changed": result.weights_changed,
        "tensors": result.tensors,
        "bytes": result.bytes,
    }
    return report, result.warnings


def _into_lora(args, specs):
    from lorafile.runtime.lorafiles.combine import combine_files

    result = combine_files(specs, args.output, args.rank, args.dtype)
    return result.to_dict(), result.warnings


def _text(report: dict) -> str:
    if "base" in report:
        lines = [
            f"Wrote {report['output']}: {report['base']} with {len(report['loras'])} LoRA(s) "
            f"merged into {report['weights_changed']} of {report['tensors']} tensors "
            f"({report['bytes'] / 2**20:.1f} MiB)."
        ]
        lines += [
            f"  {x['file']} at strength {x['strength']:g}: {x['modules']} modules, "
            f"sha256 {x['sha256'][:12]}"
            for x in report["loras"]
        ]
        return "\n".join(lines)
    ranks = sorted({m["rank_after"] for m in report["modules"]})
    how = "ranks concatenated (exact)" if report["mode"] == "concat" else "SVD"
    lines = [
        f"Wrote {report['output']}: {len(report['inputs'])} LoRA(s) into one, "
        f"{len(report['modules'])} modules, {how}, ranks {ranks[0]}..{ranks[-1]}."
    ]
    if report["mode"] == "svd":
        lows = sorted(report["modules"], key=lambda m: m["energy"])[:3]
        lines.append(
            f"  retained energy {report['energy']:.4f} of the summed weight changes; "
            "lowest: " + ", ".join(f"{m['module']} {m['energy']:.3f}" for m in lows)
        )
    return "\n".join(lines)
