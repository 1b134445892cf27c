"""The bucket preview: which bucket each image trains at and what the centre crop removes.

Buckets come from the native trainer's own rules (runtime/train/data.py `BucketSpec`, kohya's
`make_bucket_resolutions` semantics): an image goes to the bucket with the closest aspect ratio,
is scaled to cover it and centre-cropped. The crop share is the fraction of the scaled image's
pixels that the crop throws away; an image whose aspect ratio lies outside the range the buckets
span always loses more than the rounding to a bucket would explain (`extreme_aspect`).
"""

from __future__ import annotations

from collections import defaultdict

from lorafile.compiler.diagnostics import Severity
from lorafile.runtime.dataprep.settings import Entry, PrepSettings, problem
from lorafile.runtime.train.data import BucketSpec, cover_and_crop

ASPECT_TOLERANCE = 0.02
"""Aspect ratios within 2% of the extreme buckets' are their rounding, not a problem."""


def crop_share(size: tuple[int, int], bucket: tuple[int, int]) -> float:
    """Share of pixels the cover-and-centre-crop of `size` into `bucket` removes (0 to 1)."""
    rw, rh, _, _ = cover_and_crop(size[0], size[1], *bucket)
    return 1.0 - (bucket[0] * bucket[1]) / (rw * rh)


def aspect_range(spec: BucketSpec) -> tuple[float, float]:
    """The narrowest and the widest aspect ratio (w / h) among the buckets."""
    aspects = [w / h for w, h in spec.buckets()]
    return min(aspects), max(aspects)


def assign_buckets(entries: list[Entry], settings: PrepSettings) -> None:
    """Fill each readable entry's bucket and crop share; report extreme aspect ratios."""
    low, high = aspect_range(settings.bucketing)
    for entry in entries:
        facts = entry.facts
        if not facts.ok:
            continue
        # The native trainer and SimpleTuner bucket the upright image; kohya the stored pixels.
        stored = settings.trainer == "kohya"
        size = (facts.width, facts.height) if stored else facts.upright_size
        entry.bucket = settings.bucketing.bucket_for(size)
        entry.crop_share = crop_share(size, entry.bucket)
        aspect = size[0] / size[1]
        if low / (1 + ASPECT_TOLERANCE) <= aspect <= high * (1 + ASPECT_TOLERANCE):
            continue
        entry.problems.append(
            problem(
                "extreme_aspect",
                f"The aspect ratio {_ratio(aspect)} lies outside the buckets' range "
                f"({_ratio(low)} to {_ratio(high)}): the crop to {_size(entry.bucket)} removes "
                f"{entry.crop_share:.0%} of the image.",
                "crop the image to the part that matters, or widen `buckets` in the recipe",
                Severity.WARNING,
                entry.path,
            )
        )


def preview(entries: list[Entry], settings: PrepSettings) -> list[dict]:
    """Each bucket with its images and their crop shares, sorted by size."""
    groups: dict[tuple[int, int], list[Entry]] = defaultdict(list)
    for entry in entries:
        if entry.bucket is not None and not entry.rejected:
            groups[entry.bucket].append(entry)
    need = settings.batch
    return [
        {
            "size": list(size),
            "count": len(members),
            "below_batch": len(members) * settings.repeats < need,
            "images": [{"path": str(e.path), "crop": round(e.crop_share, 4)} for e in members],
        }
        for size, members in sorted(groups.items())
    ]


def small_buckets(buckets: list[dict], settings: PrepSettings) -> list:
    """A warning for each bucket with fewer samples than one batch."""
    out = []
    for b in buckets:
        if not b["below_batch"]:
            continue
        out.append(
            problem(
                "small_bucket",
                f"Bucket {_size(b['size'])} holds {b['count']} image(s) x {settings.repeats} "
                f"repeats, fewer than the batch of {settings.batch}: the native trainer and kohya "
                "train it as a smaller, noisier batch; SimpleTuner drops it.",
                "crop those images to a common aspect ratio, add images of that shape, raise "
                "`repeats`, or lower the batch",
                Severity.WARNING,
                settings.folder,
            )
        )
    return out


def _ratio(aspect: float) -> str:
    return f"{aspect:.2f}:1" if aspect >= 1 else f"1:{1 / aspect:.2f}"


def _size(size) -> str:
    return f"{size[0]}x{size[1]}"
