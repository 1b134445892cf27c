"""`lorafile eval TARGET -o OUT`: the test grid of a LoRA across checkpoints and strengths,
with bleeding, strength, diversity and memorisation scores and an HTML report."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from lorafile.files import real_path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="render the test grid (prompts x strengths, every checkpoint) and score bleeding",
        description=(
            "Evaluate a native run folder (its checkpoints), a recipe (its output folder) or a "
            "LoRA file (with --base): strong, adjacent and trigger-free prompts at fixed seeds, "
            "at several strengths, for every checkpoint. Writes labelled PNG grids, report.json "
            "and index.html (scores, loss curve, recipe), which opens from disk. See docs/eval.md."
        ),
    )
    p.add_argument("target", type=Path, metavar="TARGET", help="run folder, .recipe, or LoRA file")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="report folder")
    for flag, kind, metavar, default, help in (*WHAT, *RENDER):
        p.add_argument(flag, type=kind, metavar=metavar, default=default, help=help)
    p.add_argument("--force", action="store_true", help="replace an earlier evaluation in OUT")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# (flag, type, metavar, default, help), added in this order.
WHAT = (
    ("--base", Path, "MODEL", None, "base model (required for a LoRA file; overrides a run's)"),
    ("--prompts", Path, "FILE", None, "prompt-set file (docs/eval.md)"),
    (
        "--trigger",
        str,
        "WORD",
        None,
        "trigger word for the default prompts (default: the recipe's)",
    ),
    (
        "--strengths",
        str,
        "LIST",
        "0,0.5,0.75,1",
        "LoRA strengths, the columns (default %(default)s)",
    ),
    ("--checkpoints", str, "WHICH", "all", "all, last, or steps N,M (default all)"),
    ("--dataset", Path, "DIR", None, "training images for memorisation (default: the run's)"),
)
RENDER = (
    ("--seed", int, "S", None, "seed of the first prompt (default: the sample seed, else 42)"),
    ("--steps", int, "N", None, "sampler steps (default: the recipe's sample steps, else 28)"),
    ("--size", str, "WxH", None, "image size (default: the recipe's sample size, else 1024x1024)"),
    ("--sampler", str, "NAME", None, "sampler (default: the recipe's, else euler_a)"),
    ("--cfg", float, "G", None, "guidance scale (default: the recipe's, else 7)"),
    ("--batch", int, "N", None, "prompts per sampler call (default 8 on a GPU, 1 on a CPU)"),
    ("--device", str, "DEV", None, "torch device (default: cuda when available, else cpu)"),
)  # fmt: skip


def _option_error(option: str, value: str, help: str):
    from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError

    bag = DiagnosticBag()
    bag.error("E905", f"`{option} {value}` is not a valid value.", help)
    return DiagnosticError(bag.items)


def parse_strengths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(not -4.0 <= v <= 4.0 for v in values):
        raise _option_error("--strengths", text, "a comma-separated list in -4..4, e.g. 0,0.5,1")
    return values


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)[x×](\d+)", text.strip())
    if not match or any(int(v) % 8 or int(v) < 8 for v in match.groups()):
        raise _option_error(
            "--size", text, "WIDTHxHEIGHT in pixels, multiples of 8, e.g. 1024x1024"
        )
    return int(match.group(1)), int(match.group(2))


def run_folder_of(target: Path) -> Path:
    """A recipe's output folder (relative paths are relative to the recipe's folder)."""
    from lorafile.commands.plan import _load_recipe
    from lorafile.compiler.dataset_count import resolve
    from lorafile.compiler.diagnostics import fail

    recipe = _load_recipe(target)
    out = resolve(recipe.output.path, real_path(target).parent)  # as the trainer resolves it
    if not (out / "plan.json").is_file():
        raise fail(
            "E907",
            f"The recipe's output folder `{out}` holds no run yet.",
            f"train it first (`lorafile train {target}`), or pass the run folder itself",
        )
    return out


def check_sampler(name: str | None) -> None:
    from lorafile.runtime.train.sampling import SAMPLERS

    if name is not None and name not in SAMPLERS:
        raise _option_error("--sampler", name, "one of: " + ", ".join(SAMPLERS))


def run(args: argparse.Namespace) -> int:
    from lorafile.commands.train import _quiet_libraries
    from lorafile.runtime.evaluate.runner import EvalOptions, Evaluation
    from lorafile.runtime.evaluate.target import list_images, resolve_target

    check_sampler(args.sampler)
    if args.dataset is not None:
        list_images(args.dataset)  # a missing --dataset is E901 before minutes of rendering
    target = args.target
    if target.is_file() and target.suffix != ".safetensors":
        target = run_folder_of(target)
    options = EvalOptions(
        out=args.output,
        strengths=parse_strengths(args.strengths),
        checkpoints=args.checkpoints,
        prompts=args.prompts,
        trigger=args.trigger,
        seed=args.seed,
        steps=args.steps,
        size=parse_size(args.size),
        sampler=args.sampler,
        cfg=args.cfg,
        dataset=args.dataset,
        device=args.device,
        batch=args.batch,
        force=args.force,
        quiet=args.quiet,
    )
    _quiet_libraries()
    page = Evaluation(resolve_target(target, args.base), options).run()
    print(f"report: {page}")
    print(f"        {page.parent / 'report.json'}")
    return 0
