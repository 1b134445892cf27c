"""Reading one image the way the trainers do, and measuring what the checks need.

`read_image` decodes each file exactly as the native trainer's scan does (runtime/train/data.py
`read_size`: `verify()` for the container's checksums, then a full decode, because `verify()`
misses truncated pixel data), so an image prep calls corrupt is one the trainer skips. While the
pixels are in memory it takes everything the checks need, so each file is decoded once:

- a perceptual hash (imagehash's DCT hash) of a copy normalised to `ANALYSIS_SIDE`: near
  duplicates survive resizing, recompression and light crops;
- the variance of the Laplacian of that grayscale copy: blur.

Exact duplicates need a digest of all the pixels, which costs as much as the rest together; it
is taken only for images whose size, mode and perceptual hash equal another's (`pixel_digest_of`),
since identical pixels always give identical hashes.

Working on a downscaled copy keeps prep fast (docs/prep.md: 1,000 1024² JPEGs in well under a
minute on two cores) and makes the blur figure independent of the image's resolution.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ANALYSIS_SIDE = 512
"""Long side, in pixels, of the grayscale copy the hash and the blur measure look at."""
ORIENTATION_TAG = 0x0112
"""EXIF Orientation: 1 is upright; 2-8 are mirrored and/or rotated storage."""
ROTATES_90 = frozenset({5, 6, 7, 8})
"""Orientations whose upright image has width and height swapped."""
EXIF_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}
"""The EXIF Orientation values and the transposition that makes the pixels upright."""
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass
class ImageFacts:
    """What one file is: its size and storage, or why it cannot be read."""

    path: Path
    width: int = 0
    height: int = 0
    """As stored (before any EXIF orientation): the size kohya buckets by (the native trainer and
    SimpleTuner use `upright_size`)."""
    mode: str = ""
    format: str = ""
    orientation: int = 1
    bit_depth: int = 8
    has_alpha: bool = False
    error: str = ""
    """Why the trainer cannot read it ('' when it can)."""
    phash: int = 0
    """64-bit DCT perceptual hash of the normalised grayscale copy."""
    sharpness: float = 0.0
    """Variance of the 4-neighbour Laplacian of the normalised grayscale copy, in 0-255 units."""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied."""
        if self.orientation in ROTATES_90:
            return self.height, self.width
        return self.width, self.height


def read_image(path: Path) -> ImageFacts:
    """Decode `path` like the trainer and measure it; never raises for a bad file."""
    from PIL import Image

    facts = ImageFacts(path)
    if path.stat().st_size == 0:
        facts.error = "the file is empty (0 bytes)"
        return facts
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; prep refuses both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                image.load()
                _measure(image, facts)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        facts.error = f"decompression bomb ({str(err).rstrip('.')})"
    except Image.UnidentifiedImageError:
        facts.error = f"not an image Pillow can read, despite the extension `{path.suffix}`"
    except Exception as err:  # any decoder error means the trainer cannot use this file
        facts.error = f"{type(err).__name__}: {err}"
    return facts


def _measure(image, facts: ImageFacts) -> None:
    facts.width, facts.height = image.size
    facts.mode, facts.format = image.mode, image.format or ""
    facts.orientation = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    facts.bit_depth = 16 if image.mode in SIXTEEN_BIT_MODES or _png_depth(image) == 16 else 8
    facts.has_alpha = image.mode in ALPHA_MODES or "transparency" in image.info
    gray = analysis_gray(image, facts.orientation)
    facts.phash = perceptual_hash(gray)
    facts.sharpness = laplacian_variance(np.asarray(gray, dtype=np.float32))


def _png_depth(image) -> int:
    """Bit depth from a PNG's IHDR: Pillow reads 16-bit RGB(A) PNGs into 8-bit modes silently."""
    if image.format != "PNG":
        return 8
    with open(image.filename, "rb") as f:
        head = f.read(25)
    return head[24] if len(head) == 25 else 8


def pixel_digest(image) -> str:
    """sha256 of the decoded pixels with their mode and size: equal for re-saved copies."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def pixel_digest_of(path: Path) -> str:
    """`pixel_digest` of a file (decoded again: only duplicate candidates need it)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return pixel_digest(image)


def analysis_gray(image, orientation: int = 1):
    """The upright 8-bit grayscale copy with a long side of at most ANALYSIS_SIDE pixels."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        image = to_8bit(image)
    gray = image.convert("L")
    factor = max(gray.size) // ANALYSIS_SIDE
    if factor >= 2:  # a box reduction by a whole factor is several times cheaper than a resize
        gray = gray.reduce(factor)
    if max(gray.size) > ANALYSIS_SIDE:
        scale = ANALYSIS_SIDE / max(gray.size)
        size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    # The orientation is applied last, to the small copy: the result is the same.
    method = EXIF_TRANSPOSE.get(orientation)
    return gray.transpose(getattr(Image.Transpose, method)) if method else gray


def perceptual_hash(gray) -> int:
    """imagehash's 64-bit DCT hash as an int (XOR + popcount gives the Hamming distance)."""
    import imagehash

    bits = imagehash.phash(gray).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D grayscale array (0-255 values).

    Edges and texture give large second derivatives; blur flattens them, so the variance
    drops. The 8-bit rounding of a perfectly flat image alone gives about 0.1 (1/12 x 20)."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    lap = gray[1:-1, :-2] + gray[1:-1, 2:] + gray[:-2, 1:-1] + gray[2:, 1:-1] - 4 * gray[1:-1, 1:-1]
    return float(lap.var())


def to_8bit(image):
    """A 16-bit or float grayscale image scaled into 8 bits (Pillow's convert clips instead)."""
    from PIL import Image

    array = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(array, 0.0, 1.0 if array.max() <= 1.0 else 255.0)
        scaled = scaled * (255.0 if array.max() <= 1.0 else 1.0)
    else:
        top = 65535.0 if array.max() > 255 else 255.0
        scaled = array.astype(np.float64) * (255.0 / top)
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
