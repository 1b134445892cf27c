"""How fast `lorafile prep` checks a folder of 1024x1024 JPEGs (the target: 1,000 in under a
minute on two CPU cores).

Builds N distinct photo-like JPEGs in a temporary folder (not timed), runs the prep checks on
them (timed: decoding, hashes, blur, duplicates, buckets, captions) and prints images per second
and the projected time for 1,000 images.

    .venv/bin/python bench/prep_speed.py [-n 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_IMAGES = 1000
TARGET_SECONDS = 60.0


def build(folder: Path, count: int, size: int = 1024) -> None:
    """`count` distinct JPEGs: a smooth random background, shapes and grain (like a photo)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for i in range(count):
        low = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(10):
            x, y = rng.integers(0, size, 2)
            box = [int(x), int(y), int(x + rng.integers(40, 400)), int(y + rng.integers(40, 400))]
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        grain = rng.integers(-12, 12, (size, size, 1), dtype=np.int16)
        pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:05d}.jpg", quality=90)
        (folder / f"img_{i:05d}.txt").write_text("ohwx, a shape on a coloured background\n")


def measure(count: int) -> dict:
    from lorafile.runtime.dataprep.prep import THREADS, run_prep
    from lorafile.runtime.dataprep.settings import PrepSettings

    with tempfile.TemporaryDirectory(prefix="prep_speed_") as tmp:
        folder = Path(tmp)
        build(folder, count)
        start = time.perf_counter()
        report = run_prep(PrepSettings(folder, trigger="ohwx"), progress=None)
        seconds = time.perf_counter() - start
    per_second = count / seconds
    return {
        "images": count,
        "seconds": round(seconds, 2),
        "images_per_s": round(per_second, 1),
        "projected_1000_s": round(TARGET_IMAGES / per_second, 1),
        "threads": THREADS,
        "problems": sum(len(e.problems) for e in report.entries),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--images", type=int, default=TARGET_IMAGES, help="images to build")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    row = measure(args.images)
    if args.json:
        print(json.dumps(row))
    else:
        verdict = "within" if row["projected_1000_s"] <= TARGET_SECONDS else "OVER"
        print(
            f"prep: {row['images']} images of 1024x1024 in {row['seconds']} s = "
            f"{row['images_per_s']} images/s on {row['threads']} threads; 1,000 images: "
            f"{row['projected_1000_s']} s ({verdict} the {TARGET_SECONDS:.0f} s target); "
            f"{row['problems']} problems found"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
