"""`lorafile prep`: read every image the trainer would read and report what is wrong.

The phases, in order: list the files with the trainer's own rule; decode and measure each once
(images.py, on a few threads: Pillow and numpy release the GIL while they work); the checks of
one image; captions; duplicates and blur, which compare images with each other; buckets; the
dataset-level checks. Nothing is written anywhere: the source folder is only read.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lorafile.compiler import clip_bpe
from lorafile.compiler.dataset_count import list_images
from lorafile.compiler.diagnostics import Severity
from lorafile.runtime.dataprep import buckets, caption_checks, checks
from lorafile.runtime.dataprep.images import read_image
from lorafile.runtime.dataprep.settings import (
    USUAL_SIZE,
    Entry,
    PrepSettings,
    Problem,
    problem,
)

THREADS = min(4, os.cpu_count() or 1)


@dataclass
class PrepReport:
    """Everything prep found: per image, per bucket and for the dataset."""

    settings: PrepSettings
    entries: list[Entry]
    buckets: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    """Dataset-level problems (image count, shared phrases, small buckets)."""

    def all_problems(self) -> list[Problem]:
        return [p for e in self.entries for p in e.problems] + self.problems

    @property
    def exit_code(self) -> int:
        return 1 if any(p.severity is Severity.ERROR for p in self.all_problems()) else 0

    def kind_counts(self) -> Counter:
        return Counter(p.kind for p in self.all_problems())


def run_prep(settings: PrepSettings, progress: bool | None = None) -> PrepReport:
    """Check the dataset in `settings.folder`; `progress` shows a bar (default: on a TTY)."""
    paths = list_images(settings.folder, settings.rule)
    entries = [
        Entry(path, facts) for path, facts in zip(paths, _read_all(paths, progress), strict=True)
    ]
    bpe = clip_bpe.load()
    for entry in entries:
        checks.check_image(entry, settings)
        caption_checks.read_caption(entry, settings)
        caption_checks.check_caption(entry, settings, bpe)
    checks.check_duplicates(entries)
    checks.check_blur(entries)
    buckets.assign_buckets(entries, settings)
    report = PrepReport(settings, entries, buckets.preview(entries, settings))
    report.problems += buckets.small_buckets(report.buckets, settings)
    report.problems += caption_checks.concept_phrases(entries, settings)
    report.problems += _image_count(entries, settings)
    if bpe is None and settings.captions != "trigger":
        report.problems.append(caption_checks.bpe_missing(settings))
    return report


def _read_all(paths, progress: bool | None):
    show = sys.stderr.isatty() if progress is None else progress
    with ThreadPoolExecutor(THREADS) as pool:
        results = pool.map(read_image, paths)
        if show and paths:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc="prep", unit="img", file=sys.stderr)
        return list(results)


def _image_count(entries: list[Entry], settings: PrepSettings) -> list[Problem]:
    if settings.kind not in USUAL_SIZE:
        return []
    low, high = USUAL_SIZE[settings.kind]
    usable = sum(1 for e in entries if not e.rejected)
    if low <= usable <= high:
        return []
    fewer = usable < low
    return [
        problem(
            "image_count",
            f"The {settings.kind} dataset has {usable} usable images; {low}-{high} usually "
            "work best.",
            "add more varied images" if fewer else "curate it down to the best, most varied images",
            Severity.WARNING,
            settings.folder,
        )
    ]
