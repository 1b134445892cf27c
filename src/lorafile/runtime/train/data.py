"""Training data: folder scan, captions, aspect-ratio buckets, per-epoch order and augmentation.

Everything here except `load_pixels` is free of torch so that the compile path (the native
backend writes a plan with image counts and a bucket table) can use it. Pillow is imported
lazily; without it the scan still counts files but cannot read sizes.

Determinism: the order of an epoch, flips, caption dropout and tag shuffling are pure functions
of (seed, epoch, position), never of a global random state, so a resumed run sees exactly the
batches an uninterrupted run would have seen (see `epoch_batches` and `caption_for_step`).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler.dataset_count import KOHYA_EXTENSIONS, NATIVE
from lorafile.compiler.dataset_count import list_images as find_images

IMAGE_EXTENSIONS = KOHYA_EXTENSIONS
"""kohya's list (library/train_util.py IMAGE_EXTENSIONS), any case; discovery is not recursive."""

MIN_READABLE_FRACTION = 0.5
"""A run stops when more than half of a folder's images cannot be read: likely a wrong folder."""


@dataclass(frozen=True)
class ImageItem:
    """One training or regularization image with everything that decides how it is used."""

    path: str
    sha256: str
    width: int
    height: int
    caption: str
    bucket: tuple[int, int]
    """(width, height) the image is resized and cropped to."""
    source: int
    """Index of its dataset (or of its regularization folder when `is_reg`)."""
    is_reg: bool = False

    @property
    def crop(self) -> tuple[int, int, int, int]:
        """(resized_w, resized_h, crop_left, crop_top): cover the bucket, then centre-crop."""
        return cover_and_crop(self.width, self.height, *self.bucket)


@dataclass
class ScanResult:
    """What a folder scan found: usable images, skipped files with reasons, caption notes."""

    items: list[ImageItem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing_captions: list[str] = field(default_factory=list)
    caption_files: dict[str, str] = field(default_factory=dict)
    """caption file path -> sha256, for the plan's file list."""
    bad_captions: list[tuple[str, str]] = field(default_factory=list)
    """Caption files that cannot be read as UTF-8 text, with why (an error: T568)."""


# ---------------------------------------------------------------------------------------------
# Buckets (kohya library/model_util.py make_bucket_resolutions and BucketManager semantics)


def make_buckets(resolution: tuple[int, int], lo: int, hi: int, step: int) -> list[tuple[int, int]]:
    """All (w, h) with w, h multiples of `step` in [lo, hi] and area <= the resolution's area.

    Like kohya: for each width the largest height that keeps the area within the budget; the
    transposed size too; plus the training resolution itself (rounded down to `step`).
    """
    max_area = resolution[0] * resolution[1]
    buckets = {(resolution[0] // step * step, resolution[1] // step * step)}
    width = lo
    while width <= hi:
        height = min(hi, (max_area // width) // step * step)
        if height >= lo:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def assign_bucket(
    size: tuple[int, int],
    buckets: list[tuple[int, int]],
    resolution: tuple[int, int],
    step: int,
    upscale: bool = True,
) -> tuple[int, int]:
    """The bucket an image of `size` (w, h) trains at: the closest aspect ratio (kohya).

    Without upscaling (kohya bucket_no_upscale) an image smaller than the resolution's area gets
    its own bucket: its size rounded down to `step`, so it is never enlarged.
    """
    w, h = size
    max_area = resolution[0] * resolution[1]
    if not upscale and w * h <= max_area:
        return (max(step, w // step * step), max(step, h // step * step))
    aspect = w / h
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - aspect), -b[0] * b[1]))


def cover_and_crop(w: int, h: int, bw: int, bh: int) -> tuple[int, int, int, int]:
    """Scale (w, h) to cover (bw, bh) keeping the aspect ratio, then crop the centre."""
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    return rw, rh, (rw - bw) // 2, (rh - bh) // 2


def bucket_table(items: list[ImageItem]) -> list[dict]:
    """[{size: [w, h], images: n}] sorted by size, for the plan and the start-up line."""
    counts = Counter(item.bucket for item in items)
    return [{"size": list(size), "images": n} for size, n in sorted(counts.items())]


# ---------------------------------------------------------------------------------------------
# Folder scan and captions


def list_images(folder: Path) -> list[Path]:
    """The native trainer's images in `folder`: one counting function, shared with the compile
    path's per-trainer counts (compiler/dataset_count.py, rule NATIVE = IMAGE_EXTENSIONS)."""
    return find_images(folder, NATIVE)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# EXIF orientations 5-8 store the pixels turned a quarter: the upright image swaps the sides.
_QUARTER_TURNS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def read_size(path: Path) -> tuple[int, int]:
    """(width, height) of the upright image, as `load_image` will deliver it (EXIF orientation
    applied), after checking the file decodes; raises on a corrupt file."""
    from PIL import Image

    with Image.open(path) as image:
        image.verify()  # checks structure and checksums without decoding every pixel
    with Image.open(path) as image:
        image.load()  # verify() misses truncated pixel data; a full decode does not
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:
            return height, width  # else a portrait photo would be bucketed (and cropped) landscape
        return width, height


def caption_for(image: Path, mode: str) -> tuple[str, Path | None]:
    """The caption of one image and the sidecar file it came from (None if none).

    `mode` is the recipe's `captions`: an extension (`txt`, `caption`, ...), `filename` or
    `trigger` (no caption; the trigger alone).
    """
    if mode == "trigger":
        return "", None
    if mode == "filename":
        return image.stem.replace("_", " ").replace("-", " ").strip(), None
    sidecar = image.with_suffix("." + mode.lstrip("."))
    if not sidecar.is_file():  # a FIFO or a folder named like one is no caption file either
        return "", sidecar
    text = read_caption_file(sidecar).strip()
    return " ".join(text.split()), sidecar


class CaptionError(ValueError):
    """A caption file that is not UTF-8 text (or cannot be read); says which and why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_caption_file(path: Path) -> str:
    """A caption file's text: UTF-8, with or without a byte-order mark; CaptionError if not."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        bad = err.object[err.start : err.start + 1].hex()
        raise CaptionError(path, f"not UTF-8 text (byte 0x{bad} at offset {err.start})") from err
    except OSError as err:
        raise CaptionError(path, f"cannot be read ({err.strerror or err})") from err


def with_trigger(caption: str, trigger: str | None) -> str:
    """Prepend the trigger (once) so that tag shuffling with keep_tokens >= 1 keeps it first."""
    if not trigger:
        return caption
    if not caption:
        return trigger
    if caption == trigger or caption.startswith(trigger + ",") or caption.startswith(trigger + " "):
        return caption
    return f"{trigger}, {caption}"


def scan_folder(
    folder: Path,
    *,
    captions: str,
    trigger: str | None,
    source: int,
    bucketing: BucketSpec,
    is_reg: bool = False,
    class_prompt: str | None = None,
) -> ScanResult:
    """Find the images of one folder, read their sizes and captions, assign buckets.

    Unreadable images are skipped and listed, never fatal here (see `check_enough`).
    Regularization images use their sidecar caption when there is one, else the class prompt,
    and never get the trigger.
    """
    result = ScanResult()
    for path in list_images(folder):
        try:
            size = read_size(path)
        except Exception as err:  # any decoder error means "cannot use this file"
            result.skipped.append((str(path), f"{type(err).__name__}: {err}"))
            continue
        try:
            text, sidecar = caption_for(path, captions)
        except CaptionError as err:
            result.bad_captions.append((str(err.path), err.reason))
            continue
        if sidecar is not None and sidecar.is_file():
            result.caption_files[str(sidecar)] = file_sha256(sidecar)
        elif sidecar is not None and not is_reg:
            result.missing_captions.append(str(path))
        caption = (text or class_prompt or "") if is_reg else with_trigger(text, trigger)
        result.items.append(
            ImageItem(
                path=str(path),
                sha256=file_sha256(path),
                width=size[0],
                height=size[1],
                caption=caption,
                bucket=bucketing.bucket_for(size),
                source=source,
                is_reg=is_reg,
            )
        )
    return result


@dataclass(frozen=True)
class BucketSpec:
    """A dataset's resolution and bucket settings, resolved."""

    resolution: tuple[int, int]
    enabled: bool = True
    lo: int = 256
    hi: int = 2048
    step: int = 64
    upscale: bool = True

    @classmethod
    def from_dataset(cls, dataset) -> BucketSpec:
        b = dataset.buckets
        res = (dataset.resolution.width, dataset.resolution.height)
        return cls(res, b.enabled, b.min, b.max, b.step, b.upscale)

    def buckets(self) -> list[tuple[int, int]]:
        if not self.enabled:
            return [self.resolution]
        lo = min(self.lo, *self.resolution) // self.step * self.step or self.step
        hi = max(self.hi, *self.resolution)
        return make_buckets(self.resolution, lo, hi, self.step)

    def bucket_for(self, size: tuple[int, int]) -> tuple[int, int]:
        if not self.enabled:
            return self.resolution
        return assign_bucket(size, self.buckets(), self.resolution, self.step, self.upscale)


def check_enough(result: ScanResult, folder: str, minimum: int = 1) -> str | None:
    """A message when too few readable images remain to train on, else None."""
    return check_counts(len(result.items), len(result.skipped), folder, minimum)


def check_counts(usable: int, unreadable: int, folder: str, minimum: int = 1) -> str | None:
    total = usable + unreadable
    if usable < minimum:
        return f"`{folder}` has {usable} usable images ({unreadable} unreadable); at least {minimum} are needed."
    if total and usable / total < MIN_READABLE_FRACTION:
        return f"{unreadable} of {total} images in `{folder}` cannot be read; that looks like the wrong folder."
    return None


# ---------------------------------------------------------------------------------------------
# Epoch order


@dataclass(frozen=True)
class Sample:
    """One entry of a batch: an image index into the item list and whether it is flipped."""

    index: int
    flip: bool = False


def _rng(*parts: object) -> random.Random:
    """A private generator for (seed, epoch, ...): string seeds hash with sha512, stable across runs."""
    return random.Random(":".join(str(p) for p in parts))


def epoch_batches(
    items: list[ImageItem],
    *,
    repeats: list[int],
    reg_ratio: float,
    batch: int,
    seed: int,
    epoch: int,
    flip: list[bool],
) -> list[list[Sample]]:
    """The batches of one epoch, each from a single bucket, in a shuffled but seeded order.

    Subject images appear `repeats[source]` times. Regularization images fill `reg_ratio` times
    as many slots as there are subject samples (kohya re-uses reg images the same way), cycling
    through them in a seeded order, and share batches with subject images of the same bucket.
    """
    rng = _rng(seed, "epoch", epoch)
    subject = [i for i, it in enumerate(items) if not it.is_reg]
    reg = [i for i, it in enumerate(items) if it.is_reg]
    slots = [i for i in subject for _ in range(repeats[items[i].source])]
    if reg:
        order = reg[:]
        rng.shuffle(order)
        count = round(len(slots) * reg_ratio)
        slots += [order[k % len(order)] for k in range(count)]
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index in slots:
        by_bucket.setdefault(items[index].bucket, []).append(index)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches += [members[k : k + batch] for k in range(0, len(members), batch)]
    rng.shuffle(batches)
    return [
        [Sample(i, flip[items[i].source] and rng.random() < 0.5) for i in group]
        for group in batches
    ]


def batches_per_epoch(
    items: list[ImageItem], repeats: list[int], reg_ratio: float, batch: int
) -> int:
    """Number of batches `epoch_batches` yields, without building them."""
    sizes: Counter = Counter()
    subject = [it for it in items if not it.is_reg]
    reg = [it for it in items if it.is_reg]
    for it in subject:
        sizes[it.bucket] += repeats[it.source]
    if reg:
        count = round(sum(repeats[it.source] for it in subject) * reg_ratio)
        # Which reg images fill the slots depends on the epoch; the batch count barely does.
        # Estimate with the reg images' bucket shares (exact when all share one bucket).
        shares = Counter(it.bucket for it in reg)
        for bucket, n in shares.items():
            sizes[bucket] += round(count * n / len(reg))
    return sum(math.ceil(n / batch) for n in sizes.values())


def caption_for_step(
    caption: str,
    *,
    shuffle: bool,
    keep_tokens: int,
    dropout: float,
    seed: int,
    epoch: int,
    position: int,
) -> str:
    """The caption a sample trains with this step (kohya semantics, seeded per position).

    Dropout replaces the whole caption with "" (the unconditional prompt). Shuffling permutes
    the comma-separated tags after the first `keep_tokens` (the trigger is the first tag).
    """
    rng = _rng(seed, "caption", epoch, position)
    if dropout and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


# ---------------------------------------------------------------------------------------------
# Pixels (torch)


def load_pixels(item: ImageItem, flip: bool = False, hue_shift: float = 0.0):
    """The image as a (3, H, W) float tensor in [-1, 1], resized to cover its bucket and
    centre-cropped; also the SDXL time ids (orig_h, orig_w, crop_top, crop_left, h, w).

    `hue_shift` (a fraction of the hue circle, e.g. +-0.03) is the colour augmentation, like
    kohya's color_aug (a small random hue rotation per step)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    bw, bh = item.bucket
    rw, rh, left, top = item.crop
    with Image.open(item.path) as image:
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    rgb = rgb.resize((rw, rh), Image.Resampling.LANCZOS).crop((left, top, left + bw, top + bh))
    if flip:
        rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if hue_shift:
        h, sat, val = rgb.convert("HSV").split()
        h = h.point(lambda x: (x + round(hue_shift * 256)) % 256)
        rgb = Image.merge("HSV", (h, sat, val)).convert("RGB")
    array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return pixels, time_ids(item)


def time_ids(item: ImageItem) -> tuple[int, int, int, int, int, int]:
    """SDXL micro-conditioning: original size, crop top-left, target size, as (h, w) pairs.

    The crop is in the resized image's pixels, like kohya's crop_ltrb and diffusers'
    `compute_time_ids`; a flip keeps the same ids (kohya does the same).
    """
    bw, bh = item.bucket
    _, _, left, top = item.crop
    return (item.height, item.width, top, left, bh, bw)
