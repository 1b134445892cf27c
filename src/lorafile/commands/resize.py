"""`lorafile resize LORA --rank N | --energy F | --ratio R -o OUT`: shrink a LoRA by SVD."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "resize",
        help="shrink a LoRA's ranks by SVD per module, keeping its strength",
        description=(
            "Truncate each LoRA/LoCon module's SVD (kohya's resize_lora.py method) to a rank "
            "chosen by --rank N, --energy F (keep the share F of each module's squared "
            "Frobenius norm; kohya's sv_fro with sqrt(F)) or --ratio R (singular values at least "
            "the largest / R; kohya's sv_ratio). Alpha is rescaled so the effective weight is "
            "unchanged up to the truncation. Reports per-module ranks, the retained energy and "
            "the size before and after. LoHa files are refused unless --dense-fallback."
        ),
    )
    parser.add_argument("input", metavar="LORA", help="the LoRA .safetensors file")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, help="the largest rank any module keeps")
    how.add_argument(
        "--energy", type=float, help="the share of each module's energy to keep, in (0, 1]"
    )
    how.add_argument("--ratio", type=float, help="keep singular values >= largest / RATIO")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write")
    parser.add_argument(
        "--dense-fallback",
        action="store_true",
        help="rewrite LoHa modules as plain LoRA (SVD of the dense weight change) instead of refusing",
    )
    parser.add_argument(
        "--dtype",
        choices=("fp16", "bf16", "fp32"),
        default=None,
        help="cast the weights (default: keep the input's)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="report format")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorafile.commands._output import refuse_folder_as_file, reporting_write_errors
    from lorafile.compiler.diagnostics import render_all
    from lorafile.runtime.lorafiles.resize import Criterion, resize_file

    refuse_folder_as_file(args.output)
    criterion = Criterion(args.rank, args.energy, args.ratio)
    with reporting_write_errors(args.output):
        result = resize_file(args.input, args.output, criterion, args.dense_fallback, args.dtype)
    if len(result.warnings):
        print(render_all(result.warnings), file=sys.stderr)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(_text(result, criterion))
    return 0


def _text(result, criterion) -> str:
    counts: dict[tuple[int, int], int] = {}
    for m in result.modules:
        counts[(m.rank_before, m.rank_after)] = counts.get((m.rank_before, m.rank_after), 0) + 1
    lines = [
        f"Wrote {result.path}: {len(result.modules)} modules resized ({criterion.describe()}), "
        f"retained energy {result.energy:.4f}, "
        f"{result.bytes_before / 2**20:.2f} MiB -> {result.bytes_after / 2**20:.2f} MiB."
    ]
    lines += [f"  rank {a} -> {b}: {n} module(s)" for (a, b), n in sorted(counts.items())]
    low = sorted(result.modules, key=lambda m: m.energy)[:5]
    lines.append("  lowest retained energy: " + ", ".join(f"{m.name} {m.energy:.3f}" for m in low))
    return "\n".join(lines)
