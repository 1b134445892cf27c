"""What a prep run checks against, and the shape of one finding.

`PrepSettings` is the dataset as the trainer will read it: how images are listed (the trainer's
`ImageRule`), where captions come from, the trigger, the resolution and buckets, the batch. The
command fills it from `--recipe` (or a kohya / SimpleTuner config) and the flags; without a
recipe it holds the native trainer's defaults. Every finding is a `Problem`: a `kind` (the word
in the JSON, one per check) and a coded diagnostic (D8xx, docs/diagnostics.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler.dataset_count import NATIVE, ImageRule
from lorafile.compiler.diagnostics import Diagnostic, Severity
from lorafile.runtime.dataprep.images import ImageFacts
from lorafile.runtime.train.data import BucketSpec

MIN_SIDE = 512
"""The seed article's rejection floor: drop images under 512 px on either side."""
USUAL_SIZE = {"style": (15, 50), "character": (20, 100)}
"""Image counts that usually work (community guides; the same table as lint rule L304)."""

# kind -> code: the JSON's `kind` words and their diagnostic codes (docs/diagnostics.md, D8xx).
CODES = {
    "corrupt": "D801",
    "too_small": "D802",
    "blurry": "D803",
    "duplicate": "D804",
    "near_duplicate": "D805",
    "color_mode": "D806",
    "exif_rotated": "D807",
    "extreme_aspect": "D808",
    "no_caption": "D810",
    "empty_caption": "D811",
    "no_trigger": "D812",
    "caption_too_long": "D813",
    "token_count_skipped": "D814",
    "unreadable_caption": "D815",
    "image_count": "D820",
    "concept_phrase": "D821",
    "small_bucket": "D822",
}
REJECTED_KINDS = frozenset({"corrupt", "too_small", "blurry", "duplicate", "near_duplicate"})
"""Kinds `--fix` leaves out of the cleaned copy."""


@dataclass(frozen=True)
class PrepSettings:
    """The dataset as the trainer will read it."""

    folder: Path
    rule: ImageRule = NATIVE
    captions: str = "txt"
    """The recipe's `captions`: a sidecar extension, `filename` or `trigger`."""
    trigger: str | None = None
    trigger_in_captions: bool = True
    """True: the captions must carry the trigger themselves (`--trigger`). False: the trainer
    prepends the recipe's trigger, so a caption without it is fine (docs/prep.md)."""
    min_side: int = MIN_SIDE
    bucketing: BucketSpec = field(default_factory=lambda: BucketSpec((1024, 1024)))
    batch: int = 1
    repeats: int = 1
    kind: str | None = None
    """`style`, `character` or `concept` when a recipe says so (the image-count check)."""
    trainer: str = "native"

    @property
    def min_short_side(self) -> int:
        """An image is too small below `--min-side` or half the resolution's shorter side."""
        return max(self.min_side, min(self.bucketing.resolution) // 2)


@dataclass(frozen=True)
class Problem:
    """One finding: its kind and the diagnostic that explains it."""

    kind: str
    diagnostic: Diagnostic

    @property
    def severity(self) -> Severity:
        return self.diagnostic.severity

    def to_dict(self) -> dict:
        d = self.diagnostic
        return {
            "code": d.code,
            "kind": self.kind,
            "severity": str(d.severity),
            "message": d.message,
            "help": d.help,
        }


def problem(
    kind: str, message: str, help: str, severity: Severity, path: Path | None = None
) -> Problem:
    """A Problem of `kind` with its D8xx code, located at `path` (a file or the folder)."""
    where = str(path) if path is not None else None
    return Problem(kind, Diagnostic(CODES[kind], message, help, severity, file=where))


@dataclass
class Entry:
    """One listed image with its caption, bucket and problems."""

    path: Path
    facts: ImageFacts
    caption: str | None = None
    """The caption file's text (None: no caption file; '' for an empty one)."""
    caption_file: Path | None = None
    caption_error: str | None = None
    """Why the caption file cannot be read (not UTF-8, unreadable); None when it can."""
    bucket: tuple[int, int] | None = None
    crop_share: float = 0.0
    """Share of the resized image's pixels the centre crop to the bucket removes."""
    problems: list[Problem] = field(default_factory=list)

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    @property
    def rejected(self) -> bool:
        return bool(self.kinds() & REJECTED_KINDS)
