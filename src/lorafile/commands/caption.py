"""`lorafile caption DIR`: write the missing caption files of a dataset with a VLM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorafile.commands.prep import add_progress_option
from lorafile.compiler.diagnostics import DiagnosticBag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "caption",
        help="write a caption file for every image that has none (Florence-2 or any local "
        "image-to-text model)",
        description=(
            "Caption every image of DIR that has no caption file, with Florence-2 (transformers' "
            "own Florence2ForConditionalGeneration, detailed-caption task) or any image-to-text "
            "model folder transformers' Auto classes load. Existing captions are kept unless "
            "--overwrite; a second run writes nothing; files are written atomically, one batch "
            "at a time, so an interrupted run resumes where it stopped."
        ),
    )
    p.add_argument("folder", type=Path, help="the dataset folder")
    p.add_argument(
        "--model",
        default=None,
        help="a model folder, or a hub name (downloaded; default florence-community/Florence-2-large)",
    )
    p.add_argument("--trigger", help="prepend this trigger word to every new caption")
    p.add_argument(
        "--prompt",
        help="Florence-2 task token (default <DETAILED_CAPTION>), or the instruction for a chat model",
    )
    p.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="WORDS",
        help="strip these words from new captions (comma-separated; repeatable), e.g. the "
        "style's own name",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing caption files")
    p.add_argument("--batch", type=int, default=4, help="images per model call (default 4)")
    p.add_argument(
        "--recipe",
        type=Path,
        help="a recipe: its `captions` extension and its trainer's image listing",
    )
    p.add_argument("--extension", help="caption file extension (default txt, or the recipe's)")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorafile.commands.prep import check_folder
    from lorafile.runtime.dataprep.caption import DEFAULT_MODEL, CaptionOptions, caption_folder

    check_folder(args.folder)
    _check_batch(args.batch)
    extension, rule = _from_recipe(args) if args.recipe else ("txt", None)
    remove = tuple(w.strip() for group in args.remove for w in group.split(",") if w.strip())
    options = CaptionOptions(
        model=args.model or DEFAULT_MODEL,
        trigger=args.trigger,
        prompt=args.prompt,
        remove=remove,
        overwrite=args.overwrite,
        batch=args.batch,
        extension=args.extension or extension,
        **({"rule": rule} if rule is not None else {}),
    )
    result = caption_folder(args.folder, options, progress=args.progress)
    print(
        f"caption `{args.folder}`: wrote {len(result.written)} caption file(s), kept "
        f"{len(result.kept)} existing, {len(result.failed)} failed"
    )
    for path, why in result.failed:
        print(f"  failed: {path} ({why})")
    return 0


def _check_batch(batch: int) -> None:
    if batch >= 1:
        return
    bag = DiagnosticBag()
    bag.error("D834", f"`--batch {batch}` must be at least 1.", "pass --batch 1 or more")
    bag.raise_if_errors()


def _from_recipe(args: argparse.Namespace):
    """The caption extension and image listing the recipe's trainer uses for DIR."""
    from lorafile.commands.prep import from_recipe
    from lorafile.compiler.dataset_count import RULES

    found = from_recipe(args.recipe, None, args.folder)
    if found["captions"] in ("filename", "trigger"):
        bag = DiagnosticBag(file=str(args.recipe))
        bag.error(
            "D834",
            f"The recipe's dataset says `captions {found['captions']}`: it reads no caption files.",
            "write `captions txt` in the recipe's dataset block, or pass --extension",
        )
        if not args.extension:
            bag.raise_if_errors()
    if found["trigger"] and not args.trigger:
        print(
            f"note: the recipe's trigger `{found['trigger']}` is prepended by the trainer, "
            "so the captions are written without it",
            file=sys.stderr,
        )
    return found["captions"], RULES[found["trainer"]]
