"""Counting a recipe's images the way each trainer does, and the steps an epoch of it has.

A recipe can say `epochs 10` and `warmup 5%`; a trainer that only takes warmup in steps
(SimpleTuner's `lr_warmup_steps` is an int) needs the run's step count, which depends on the
images in the dataset folders. This module counts them at compile time: file names only, no image
is opened or decoded, no torch (it runs on the compile path), so it is fast on any folder.

Each trainer finds images its own way (`ImageRule`): kohya globs its extension list in one folder,
SimpleTuner walks the folder tree and takes every extension Pillow opens. The step arithmetic
per trainer follows the trainer's code (cited beside each function). Aspect buckets need the image
sizes, which are not read here: the counts assume the images of a dataset share one bucket, which
is exact with batch 1 and a lower bound on the steps otherwise (`StepCount.exact`).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.spec import Recipe

KOHYA_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""sd-scripts library/train_util.py IMAGE_EXTENSIONS: these, and their upper-case spellings."""

# SimpleTuner helpers/training/__init__.py: every extension Pillow registers as openable (a
# standard Pillow install), listed here so that counting needs no Pillow import.
SIMPLETUNER_EXTENSIONS = (
    ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".dib", ".gif",
    ".tif", ".tiff", ".tga", ".avif", ".avifs", ".jp2", ".j2k", ".jpx", ".jpf", ".jpc", ".j2c",
    ".psd", ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".qoi", ".ico", ".icns", ".cur", ".sgi",
    ".rgb", ".rgba", ".bw", ".pcx", ".dds", ".xbm", ".xpm", ".blp", ".ras", ".im", ".msp",
)  # fmt: skip
# SimpleTuner helpers/data_backend/local.py list_files: folders it never descends into.
SIMPLETUNER_SKIPPED_DIRS = frozenset(
    {".Spotlight-V100", ".Trashes", ".fseventsd", ".TemporaryItems", ".zfs", ".ipynb_checkpoints"}
)
MAX_ENTRIES = 100_000
"""A recursive count stops after this many files and folders: a dataset path like `/` or `~`
is a mistake, and compiling must stay fast (the trainer itself would walk all of it)."""


class TooManyFiles(Exception):
    """A folder tree larger than MAX_ENTRIES: not counted."""


@dataclass(frozen=True)
class ImageRule:
    """How a trainer finds the images of a folder."""

    trainer: str
    extensions: tuple[str, ...]
    any_case: bool
    """True: `.Png` counts too. False: only the listed and the all-upper-case spelling (a glob)."""
    recursive: bool
    hidden: bool = True
    """Whether names starting with `.` count (a shell glob `*.png` skips them)."""
    by_suffix: bool = False
    """Compare `Path.suffix` (a file named just `.png` has none) instead of the name's end."""
    skipped_dirs: frozenset[str] = field(default_factory=frozenset)

    def matches(self, name: str) -> bool:
        """Whether a file called `name` is one of this trainer's images."""
        if not self.hidden and name.startswith("."):
            return False
        if self.by_suffix:
            return Path(name).suffix.lower() in self.extensions
        if self.any_case:
            return name.lower().endswith(self.extensions)
        return name.endswith(self.extensions) or name.endswith(
            tuple(e.upper() for e in self.extensions)
        )


NATIVE = ImageRule("native", KOHYA_EXTENSIONS, any_case=True, recursive=False, by_suffix=True)
"""lorafile's own trainer (runtime/train/data.py): kohya's list in any case, one folder deep."""
KOHYA = ImageRule("kohya", KOHYA_EXTENSIONS, any_case=False, recursive=False, hidden=False)
"""sd-scripts glob_images: `glob(dir/*.png)` for each extension, not recursive."""
SIMPLETUNER = ImageRule(
    "simpletuner",
    SIMPLETUNER_EXTENSIONS,
    any_case=True,
    recursive=True,
    skipped_dirs=SIMPLETUNER_SKIPPED_DIRS,
)
"""SimpleTuner LocalDataBackend.list_files: os.walk with links followed, lower-cased names."""
RULES = {rule.trainer: rule for rule in (NATIVE, KOHYA, SIMPLETUNER)}
"""Each trainer's listing rule by the trainer's name."""


def _is_file(entry: os.DirEntry) -> bool:
    """DirEntry.is_file, False for a link the OS cannot follow (a symlink loop raises ELOOP),
    as for a broken link: no trainer can read it either."""
    try:
        return entry.is_file()
    except OSError:
        return False


def list_images(folder: Path, rule: ImageRule = NATIVE, limit: int | None = None) -> list[Path]:
    """The image files `rule`'s trainer would find in `folder`, sorted (names only, no decoding).

    Only regular files (or links to one) count: a FIFO, socket or device named like an image
    would block or never end the first read of it. A recursive walk raises TooManyFiles after
    `limit` entries (default MAX_ENTRIES).
    """
    limit = MAX_ENTRIES if limit is None else limit
    if not rule.recursive:
        with os.scandir(folder) as entries:
            # DirEntry.is_file: the type from the directory listing, a stat only for links
            return sorted(Path(e.path) for e in entries if rule.matches(e.name) and _is_file(e))
    found: list[Path] = []
    seen: set[str] = set()
    visited = 0
    for root, dirs, files in os.walk(folder, followlinks=True):
        visited += len(dirs) + len(files)
        if visited > limit:
            raise TooManyFiles(folder)
        real = os.path.realpath(root)
        if real in seen:  # a link loop: SimpleTuner stops descending the same way
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if d not in rule.skipped_dirs]
        found += [
            Path(root) / name
            for name in files
            if rule.matches(name) and os.path.isfile(os.path.join(root, name))
        ]
    return sorted(found)


def resolve(path: str, base_dir: Path | None) -> Path:
    """A recipe path: relative ones are relative to the recipe's folder (or the working folder);
    also runtime/train/plan.py's resolve_path, for the native trainer."""
    p = Path(path)
    with contextlib.suppress(RuntimeError):  # `~name` of an unknown user: kept as written
        p = p.expanduser()
    return p if p.is_absolute() else (base_dir or Path.cwd()) / p


@dataclass(frozen=True)
class FolderCount:
    """One dataset or regularization folder and the images a trainer finds in it."""

    path: str
    """As written in the recipe."""
    folder: Path
    """Resolved: where the images were looked for."""
    images: int | None
    """None when the folder cannot be counted here (`why_missing` says why)."""
    repeats: int = 1
    """Passes over each image per epoch (the recipe's `repeats`; 1 for regularization)."""
    is_reg: bool = False
    why_missing: str = ""
    """Why `images` is None, as the end of a sentence about the folder."""


@dataclass(frozen=True)
class Counts:
    """The image counts of every folder of a recipe, for one trainer."""

    rule: ImageRule
    folders: tuple[FolderCount, ...]

    @property
    def missing(self) -> list[FolderCount]:
        return [f for f in self.folders if f.images is None]

    @property
    def complete(self) -> bool:
        return not self.missing


def count_recipe(recipe: Recipe, rule: ImageRule, base_dir: Path | None = None) -> Counts:
    """Count the images of every dataset and regularization folder of `recipe` for `rule`."""
    entries = [(d.path, d.repeats, False) for d in recipe.datasets]
    entries += [(r.path, 1, True) for r in recipe.regularization]
    folders = []
    for path, repeats, is_reg in entries:
        folder = resolve(path, base_dir)
        images, why = _count(folder, rule)
        folders.append(FolderCount(path, folder, images, repeats, is_reg, why))
    return Counts(rule, tuple(folders))


def _count(folder: Path, rule: ImageRule) -> tuple[int | None, str]:
    try:
        if not folder.is_dir():
            return None, "does not exist here"
        return len(list_images(folder, rule)), ""
    except TooManyFiles:
        return None, f"holds more than {MAX_ENTRIES} files and folders (is it the dataset folder?)"
    except (OSError, ValueError) as err:  # unreadable, or a name no file system accepts
        return None, f"cannot be read ({err})"


@dataclass(frozen=True)
class StepCount:
    """Optimizer steps of an epoch-counted run, with the arithmetic spelled out for people."""

    per_epoch: int
    epochs: int
    how: str
    """`N images × R repeats / batch B = … steps per epoch × E epochs = S steps`."""
    exact: bool
    """False when images of different shapes could add steps (batch > 1, buckets unknown)."""

    @property
    def total(self) -> int:
        return self.per_epoch * self.epochs


def simpletuner_steps(
    recipe: Recipe, counts: Counts, epochs: int | None = None
) -> StepCount | None:
    """SimpleTuner's step count for `recipe` (None when a folder is missing or nothing trains).

    `epochs` overrides the recipe's (a steps-counted run asks for the length of one epoch).

    helpers/training/trainer.py `_recalculate_training_steps`: the batches of every image dataset
    with probability > 0 (regularisation sets included) are added up; a dataset's batches are,
    per aspect bucket, ceil(images × (repeats + 1) / batch), and a bucket with fewer samples than
    a batch is dropped (metadata backends' `__len__`). Steps per epoch = ceil(batches /
    accumulation), max_train_steps = epochs × that; the GPU count does not enter.
    """
    train = recipe.train
    epochs = train.epochs if epochs is None else epochs
    if not counts.complete or epochs is None:
        return None
    batch, parts, batches = train.batch, [], 0
    for f in counts.folders:
        samples = (f.images or 0) * f.repeats
        n = math.ceil(samples / batch) if samples >= batch else 0
        batches += n
        what = f"{f.images} regularization images" if f.is_reg else f"{f.images} images"
        times = "" if f.is_reg else f" × {f.repeats} repeats"
        parts.append(f"`{f.folder}`: {what}{times} / batch {batch} = {n} batches")
    if batches == 0:
        return None
    per_epoch = math.ceil(batches / train.accumulate)
    how = _how(parts, batches, train.accumulate, per_epoch, epochs)
    return StepCount(per_epoch, epochs, how, exact=batch == 1)


def recipe_steps(recipe: Recipe, counts: Counts, gpus: int = 1) -> StepCount | None:
    """The step count a recipe means, as sd-scripts and lorafile's trainer run it (None if unknown).

    An epoch is every image × repeats, plus `ratio` times as many regularization samples.
    sd-scripts (train_util.py DreamBoothDataset, ratio 1:1 as lorafile writes it) re-uses the
    regularization images, growing num_repeats one by one, until they fill exactly as many
    samples as training; runtime/train/data.py `epoch_batches` cycles them the same way for any ratio.
    Batches are ceil(samples / batch) per bucket; train_network.py then sets max_train_steps =
    epochs × ceil(batches / GPUs / accumulation), as runtime/train/plan.py does. Count `counts` with
    the KOHYA or NATIVE rule.
    """
    train = recipe.train
    if not counts.complete or train.epochs is None:
        return None
    subject = sum(f.images * f.repeats for f in counts.folders if not f.is_reg and f.images)
    has_reg = recipe.regularization and any(f.images for f in counts.folders if f.is_reg)
    reg = round(subject * recipe.regularization[0].ratio) if has_reg else 0
    if subject == 0:
        return None
    batches = math.ceil((subject + reg) / train.batch)
    per_epoch = math.ceil(batches / gpus / train.accumulate)
    parts = [
        f"`{f.folder}`: {f.images} images × {f.repeats} repeats"
        for f in counts.folders
        if not f.is_reg
    ]
    if has_reg:
        parts.append(f"{reg} regularization samples (ratio {recipe.regularization[0].ratio:g})")
    parts.append(f"{subject + reg} samples / batch {train.batch} = {batches} batches")
    if gpus > 1:
        parts[-1] += f" / {gpus} GPUs"
    return StepCount(
        per_epoch,
        train.epochs,
        _how(parts, None, train.accumulate, per_epoch, train.epochs),
        train.batch == 1,
    )


def _how(parts: list[str], batches: int | None, accumulate: int, per_epoch: int, epochs: int):
    text = "; ".join(parts)
    if batches is not None and len(parts) > 1:
        text += f"; {batches} batches in all"
    return (
        f"{text} / accumulation {accumulate} = {per_epoch} steps per epoch "
        f"× {epochs} epochs = {per_epoch * epochs} steps"
    )


@dataclass(frozen=True)
class DatasetSummary:
    """`lorafile lint`'s one line about a dataset folder that exists here (names only)."""

    path: str
    folder: Path
    images: int
    captions: str
    """The recipe's `captions` setting."""
    captioned: int | None
    """Images with a caption file (None for `captions filename` / `trigger`)."""

    def line(self, recipe_file: str | None = None) -> str:
        if self.captioned is None:
            about = f"captions from the {self.captions}"
        else:
            missing = self.images - self.captioned
            about = f"{self.captioned} with a .{self.captions} caption, {missing} without"
        recipe = f" --recipe {recipe_file}" if recipe_file else ""
        return (
            f"dataset `{self.path}`: {self.images} images, {about}; "
            f"`lorafile prep {self.folder}{recipe}` checks every image and caption"
        )

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "folder": str(self.folder),
            "images": self.images,
            "captioned": self.captioned,
        }


def summarize_datasets(recipe: Recipe, base_dir: Path | None = None) -> list[DatasetSummary]:
    """Image and caption counts of each dataset folder that exists (the native listing)."""
    out = []
    for d in recipe.datasets:
        folder = resolve(d.path, base_dir)
        try:
            images = list_images(folder, NATIVE) if folder.is_dir() else None
        except OSError:
            images = None
        if images is None:
            continue
        captioned = None
        if d.captions not in ("filename", "trigger"):
            suffix = "." + d.captions.lstrip(".")
            captioned = sum(1 for p in images if p.with_suffix(suffix).is_file())
        out.append(DatasetSummary(d.path, folder, len(images), d.captions, captioned))
    return out
