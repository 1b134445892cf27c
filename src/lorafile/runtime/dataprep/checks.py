"""The per-image checks of `lorafile prep`: readability, size, blur, duplicates, colour, rotation.

Each check reads the `ImageFacts` that images.py measured and appends `Problem`s to the entry.
Thresholds are module constants, documented with their reasons in docs/prep.md.
"""

from __future__ import annotations

import statistics

import numpy as np

from lorafile.compiler.diagnostics import Severity
from lorafile.runtime.dataprep.images import ROTATES_90, pixel_digest_of
from lorafile.runtime.dataprep.settings import Entry, PrepSettings, problem

BLUR_FLOOR = 10.0
"""Laplacian variance (0-255 units, 512-px grayscale) under which an image is blurry in any
dataset: sharp photos and crisp illustrations measure 25 and up; a 2-px Gaussian blur of a
1024-px image lands near 3; an image upscaled 4x near 4."""
BLUR_RELATIVE = 0.2
"""An image five times softer than the dataset's median is blurry for this dataset."""
BLUR_RELATIVE_MIN_IMAGES = 5
"""The median of fewer images says too little about the dataset."""
NEAR_DISTANCE = 10
"""Hamming distance (of 64 bits) up to which two perceptual hashes are the same picture:
resized and recompressed copies measure 0-2, a 3% crop about 4, a 5% crop about 8; unrelated
images 18 and more."""


def check_readable(entry: Entry) -> None:
    if entry.facts.ok:
        return
    entry.problems.append(
        problem(
            "corrupt",
            f"The image cannot be read: {entry.facts.error}. The trainer skips it.",
            "re-export it from the original, or delete it",
            Severity.ERROR,
            entry.path,
        )
    )


def check_size(entry: Entry, settings: PrepSettings) -> None:
    facts = entry.facts
    short = min(facts.width, facts.height)
    floor = settings.min_short_side
    if short >= floor:
        return
    resolution = "x".join(map(str, settings.bucketing.resolution))
    entry.problems.append(
        problem(
            "too_small",
            f"The image is {facts.width}x{facts.height}: its shorter side is under {floor} px "
            f"(--min-side {settings.min_side}, or half the training resolution {resolution}). "
            "The trainer upscales it, and the LoRA learns its softness.",
            "replace it with a larger original, or leave it out",
            Severity.WARNING,
            entry.path,
        )
    )


def check_blur(entries: list[Entry]) -> None:
    """Flag images under the fixed floor or far under the dataset's median sharpness."""
    measured = [e for e in entries if e.facts.ok and "duplicate" not in e.kinds()]
    scores = [e.facts.sharpness for e in measured]
    median = statistics.median(scores) if len(scores) >= BLUR_RELATIVE_MIN_IMAGES else None
    for entry in measured:
        score = entry.facts.sharpness
        if score < BLUR_FLOOR:
            why = f"under the floor of {BLUR_FLOOR:g}"
        elif median is not None and score < median * BLUR_RELATIVE:
            why = f"under {BLUR_RELATIVE:g} x this dataset's median of {median:.1f}"
        else:
            continue
        entry.problems.append(
            problem(
                "blurry",
                f"The image looks blurry: its sharpness (variance of the Laplacian) is "
                f"{score:.1f}, {why}.",
                "replace it with a sharp original, or leave it out: the LoRA learns blur too",
                Severity.WARNING,
                entry.path,
            )
        )


def check_duplicates(entries: list[Entry]) -> None:
    """Same pixels first, then perceptual near-duplicates; the first in name order is kept."""
    readable = [e for e in entries if e.facts.ok]
    first_by_digest: dict[str, Entry] = {}
    for entry in _same_hash_candidates(readable):
        original = first_by_digest.setdefault(pixel_digest_of(entry.path), entry)
        if original is not entry:
            entry.problems.append(
                problem(
                    "duplicate",
                    f"The image has the same pixels as `{original.path.name}`.",
                    "delete one of the two: a duplicate is trained twice as often",
                    Severity.WARNING,
                    entry.path,
                )
            )
    _near_duplicates([e for e in readable if "duplicate" not in e.kinds()])


def _same_hash_candidates(entries: list[Entry]) -> list[Entry]:
    """Entries whose size, mode and perceptual hash equal another's, in name order."""
    groups: dict[tuple, list[Entry]] = {}
    for entry in entries:
        f = entry.facts
        groups.setdefault((f.width, f.height, f.mode, f.phash), []).append(entry)
    shared = {id(e) for group in groups.values() if len(group) > 1 for e in group}
    return [e for e in entries if id(e) in shared]


def _near_duplicates(entries: list[Entry]) -> None:
    kept: list[Entry] = []
    hashes = np.zeros(len(entries), dtype=np.uint64)
    for entry in entries:
        h = np.uint64(entry.facts.phash)
        if kept:
            distances = np.bitwise_count(hashes[: len(kept)] ^ h)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= NEAR_DISTANCE:
                _near(entry, kept[nearest], int(distances[nearest]))
                continue
        hashes[len(kept)] = h
        kept.append(entry)


def _near(entry: Entry, original: Entry, distance: int) -> None:
    entry.problems.append(
        problem(
            "near_duplicate",
            f"The image is a near copy of `{original.path.name}` (perceptual hashes {distance} "
            f"of 64 bits apart): resized, recompressed or lightly cropped.",
            "keep the better of the two; near copies over-weight one picture",
            Severity.WARNING,
            entry.path,
        )
    )


def check_color_mode(entry: Entry) -> None:
    facts = entry.facts
    found = _color_problem(facts)
    if found is None:
        return
    message, severity = found
    entry.problems.append(
        problem(
            "color_mode",
            message,
            "`lorafile prep DIR --fix OUT` writes an 8-bit RGB copy",
            severity,
            entry.path,
        )
    )


def _color_problem(facts) -> tuple[str, Severity] | None:
    if facts.mode == "CMYK":
        return (
            "The image is CMYK: trainers convert it to RGB with Pillow's formula, without a "
            "colour profile, so its colours shift.",
            Severity.WARNING,
        )
    if facts.bit_depth == 16 and facts.mode in ("RGB", "RGBA"):
        return (
            "The image has 16 bits per channel: trainers read it as 8-bit RGB (the low bits "
            "are dropped).",
            Severity.INFO,
        )
    if facts.bit_depth == 16:
        return (
            f"The image is 16-bit grayscale ({facts.mode}): Pillow's convert('RGB') clips "
            "its values to 255, so the native trainer and kohya train on a nearly white image.",
            Severity.WARNING,
        )
    if facts.has_alpha:
        return (
            f"The image has transparency ({facts.mode}): the native trainer and kohya drop "
            "it (hidden pixels show, often black); SimpleTuner puts it on white.",
            Severity.WARNING,
        )
    if facts.mode == "P":
        return ("The image is a palette image: trainers convert it to RGB.", Severity.INFO)
    return None


def check_orientation(entry: Entry) -> None:
    orientation = entry.facts.orientation
    if orientation in (0, 1):
        return
    turn = "rotated by 90 degrees" if orientation in ROTATES_90 else "rotated or mirrored"
    entry.problems.append(
        problem(
            "exif_rotated",
            f"The pixels are stored {turn} (EXIF orientation {orientation}): the native "
            "trainer applies the orientation, kohya sd-scripts does not (it trains on the "
            "stored pixels), SimpleTuner's OpenCV decoder does.",
            "`lorafile prep DIR --fix OUT` writes the upright pixels, which every trainer reads "
            "the same way",
            Severity.WARNING,
            entry.path,
        )
    )


def check_image(entry: Entry, settings: PrepSettings) -> None:
    """The checks that look at one image alone."""
    check_readable(entry)
    if not entry.facts.ok:
        return
    check_size(entry, settings)
    check_color_mode(entry)
    check_orientation(entry)
