"""`lorafile prep DIR`: the rejection pass, caption checks and bucket preview of a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.files import real_path

TRAINERS = ("native", "kohya", "simpletuner")
KIND_TRAINER = {"recipe": "native", "kohya": "kohya", "simpletuner": "simpletuner"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prep",
        help="check a dataset before training: unreadable, small, blurry, duplicate images, "
        "captions, buckets",
        description=(
            "Read every image the trainer would read and report, per image, what is wrong "
            "(corrupt, too small, blurry, duplicates, colour mode, EXIF rotation, extreme aspect "
            "ratio, missing or empty captions, missing trigger, captions over CLIP's 77 tokens), "
            "then the dataset's size, phrases every caption repeats, and a bucket preview. "
            "The folder is only read. Exit status 1 when an image cannot be read."
        ),
    )
    p.add_argument("folder", type=Path, help="the dataset folder")
    p.add_argument(
        "--recipe",
        type=Path,
        help="a recipe (or kohya / SimpleTuner config): its trainer's listing, captions, "
        "trigger, resolution, buckets, batch and kind",
    )
    p.add_argument(
        "--from", dest="from_", choices=tuple(KIND_TRAINER), help="the --recipe file's format"
    )
    p.add_argument("--trainer", choices=TRAINERS, help="list images as this trainer does")
    p.add_argument(
        "--trigger",
        help="the trigger word every caption must start with (checked, and --fix adds it)",
    )
    p.add_argument("--kind", choices=("style", "character", "concept"), help="the dataset's kind")
    p.add_argument("--captions", help="caption extension, `filename` or `trigger` (default txt)")
    p.add_argument(
        "--min-side", type=int, default=512, help="reject images whose shorter side is smaller"
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--fix",
        type=Path,
        metavar="OUT",
        help="write a cleaned copy to the new folder OUT (the source is never changed)",
    )
    add_progress_option(p)
    p.set_defaults(func=run)


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """`--progress/--no-progress` of the dataset commands (prep, caption); None: when stderr is
    a terminal."""
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    from lorafile.runtime.dataprep.fix import render_changes, write_fixed
    from lorafile.runtime.dataprep.prep import run_prep
    from lorafile.runtime.dataprep.report import render_text, to_json

    settings = settings_from_args(args)
    report = run_prep(settings, progress=args.progress)
    fixed = write_fixed(report, args.fix) if args.fix is not None else None
    if args.format == "json":
        data = to_json(report)
        if fixed is not None:
            data["fix"] = {"out": str(fixed.out), "changes": fixed.changes}
        print(json.dumps(data, indent=2))
    else:
        print(render_text(report), end="")
        if fixed is not None:
            print("\n" + render_changes(fixed), end="")
    return report.exit_code


def settings_from_args(args: argparse.Namespace):
    """PrepSettings from the flags, and from --recipe when given (flags win)."""
    from lorafile.compiler.dataset_count import RULES
    from lorafile.runtime.dataprep.settings import PrepSettings
    from lorafile.runtime.train.data import BucketSpec

    check_folder(args.folder)
    found = dict(trainer="native", captions="txt", trigger=None, trigger_in_captions=True)
    if args.recipe is not None:
        found |= from_recipe(args.recipe, args.from_, args.folder)
    if args.trigger:
        found |= dict(trigger=args.trigger, trigger_in_captions=True)
    trainer = args.trainer or found["trainer"]
    return PrepSettings(
        folder=args.folder,
        rule=RULES[trainer],
        captions=args.captions or found["captions"],
        trigger=found["trigger"],
        trigger_in_captions=found["trigger_in_captions"],
        min_side=args.min_side,
        bucketing=found.get("bucketing", BucketSpec((1024, 1024))),
        batch=found.get("batch", 1),
        repeats=found.get("repeats", 1),
        kind=args.kind or found.get("kind"),
        trainer=trainer,
    )


def check_folder(folder: Path) -> None:
    if folder.is_dir():
        return
    bag = DiagnosticBag(file=str(folder))
    what = "does not exist" if not folder.exists() else "is not a folder"
    bag.error("D830", f"The dataset folder `{folder}` {what}.", "pass the folder of images")
    bag.raise_if_errors()


def from_recipe(path: Path, from_: str | None, folder: Path) -> dict:
    """The settings a recipe gives the dataset in `folder` (or its first dataset)."""
    from lorafile.backends.load import load_input
    from lorafile.compiler.dataset_count import resolve
    from lorafile.runtime.train.data import BucketSpec

    loaded = load_input(path, from_=from_)
    bag = DiagnosticBag(file=str(path))
    bag.extend(loaded.diagnostics)
    bag.raise_if_errors()
    recipe = loaded.recipe
    base = path.parent
    matching = [d for d in recipe.datasets if real_path(resolve(d.path, base)) == real_path(folder)]
    if not matching:
        print(
            f"note: `{folder}` is not a dataset of `{path}`; using its first dataset's settings",
            file=sys.stderr,
        )
    dataset = (matching or recipe.datasets)[0]
    return dict(
        trainer=KIND_TRAINER.get(loaded.kind, "native"),
        captions=dataset.captions,
        trigger=recipe.trigger,
        trigger_in_captions=False,
        bucketing=BucketSpec.from_dataset(dataset),
        batch=recipe.train.batch,
        repeats=dataset.repeats,
        kind=dataset.kind,
    )
