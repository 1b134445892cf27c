"""`lorafile lint FILE`: VRAM report and lint findings for a recipe, kohya or SimpleTuner config."""

from __future__ import annotations

import json
from pathlib import Path

from lorafile.compiler.dataset_count import summarize_datasets
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, printable
from lorafile.compiler.vram import TRAINERS
from lorafile.files import real_path

KIND_TRAINER = {"recipe": "native", "kohya": "kohya", "simpletuner": "simpletuner"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lint",
        help="estimate peak VRAM against a budget and check a recipe or trainer config for traps",
        description=(
            "Estimate the peak GPU memory of a recipe, kohya config or SimpleTuner config, judge it "
            "against a budget, rank the changes that would save memory, and run the lint rules. "
            "Exit status 0 when it fits and no rule reports an error, 1 otherwise."
        ),
    )
    p.add_argument("file", type=Path, help="a .recipe, a kohya TOML or a SimpleTuner config")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--gpu", help="GPU name from the catalog, e.g. 'RTX 4090', 4090, 'A100 80GB'"
    )
    budget.add_argument("--vram", help="memory per GPU, e.g. 12GB or 16GiB")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per machine (default: the file's)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--from",
        dest="from_",
        choices=("recipe", "kohya", "simpletuner"),
        default=None,
        help="the file's format, when detection guesses wrong",
    )
    p.add_argument(
        "--trainer",
        choices=sorted(TRAINERS),
        default=None,
        help="estimate for this trainer (default: the file's own; native for recipes)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="also trace one training step of the native trainer for the full-size SDXL model "
        "on the meta device (needs the train extra; 10-60 s on a CPU) and report its peak",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from lorafile.backends.load import load_input
    from lorafile.compiler import lint
    from lorafile.spec.units import UnitError, parse_size

    loaded = load_input(args.file, from_=args.from_)
    kind, smap = loaded.kind, loaded.source_map
    bag = DiagnosticBag(file=str(args.file), source=loaded.text)
    bag.extend(loaded.diagnostics)
    vram_bytes = None
    if args.vram is not None:
        try:
            vram_bytes = parse_size(args.vram)
        except (UnitError, ValueError) as err:
            bag.error("V407", f"`--vram {args.vram}` is not a memory size: {err}",
                      "write a size such as 12GB or 16GiB")  # fmt: skip
            raise DiagnosticError(bag.items) from None
    budget = lint.resolve_budget(loaded.recipe, bag, args.gpu, vram_bytes, smap)
    report = lint.lint_recipe(
        loaded.recipe,
        trainer=args.trainer or KIND_TRAINER.get(kind, "native"),
        source=kind,
        smap=smap,
        budget=budget,
        gpus_count=args.gpus,
        bag=bag,
        base_dir=None if str(args.file) == "-" else real_path(args.file).parent,
    )
    datasets = summarize_datasets(loaded.recipe, real_path(args.file).parent)
    if args.format == "json":
        data = lint.to_json(report)
        if datasets:  # only folders that exist here: configs elsewhere keep their output
            data["datasets"] = [d.to_dict() for d in datasets]
        if args.exact:  # runtime/memory/simulate.py: the traced peak next to the analytic estimate
            data["exact"] = _exact(loaded.recipe)[1]
        print(json.dumps(data, indent=2))
    else:
        print(lint.render_text(report), end="")
        for summary in datasets:  # names only: lint stays fast and torch-free
            print(printable(summary.line(str(args.file))))  # the path is the recipe's text
        if args.exact:
            print(_exact(loaded.recipe)[0], end="")
    return report.exit_code


def _exact(recipe):
    """`--exact`: the traced peak (runtime/memory/simulate.py); imports torch, so only when asked."""
    from lorafile.runtime.memory.simulate import exact_report

    return exact_report(recipe)
