"""Datasets with planted problems for the prep tests: each file name says what it holds."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TRIGGER = "zqx"
CAPTIONS = (
    "a lighthouse on a rocky shore at dusk",
    "two boats moored in a small harbour",
    "a red barn beside a wheat field",
    "a city street at night with wet pavement",
    "a bowl of lemons on a wooden table",
    "a mountain lake under low clouds",
    "an old bicycle leaning on a brick wall",
    "a forest path covered in autumn leaves",
)


def picture(seed: int, size: tuple[int, int] = (640, 576)) -> Image.Image:
    """A sharp synthetic picture: a smooth random background and a dozen crisp shapes."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    low = (nrng.random((6, 6, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        box = [x0, y0, x0 + rng.randrange(20, 300), y0 + rng.randrange(20, 300)]
        color = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return image


def detailed(seed: int) -> Image.Image:
    """`picture` with fine grain all over: a photo-like, very sharp image."""
    image = picture(seed)
    grain = np.random.default_rng(seed).integers(-40, 40, (image.height, image.width, 1))
    return Image.fromarray(
        np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    )


def clean_set(folder: Path, count: int = 6, trigger: str = TRIGGER, ext: str = "png") -> None:
    """`count` sharp, distinct images with good captions that start with the trigger."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        picture(100 + i).save(folder / f"clean_{i:02d}.{ext}")
        (folder / f"clean_{i:02d}.txt").write_text(f"{trigger}, {CAPTIONS[i % len(CAPTIONS)]}\n")


def _caption(folder: Path, stem: str, text: str = "") -> None:
    (folder / f"{stem}.txt").write_text(text or f"{TRIGGER}, a harbour seen from a hill\n")


def _jpeg_bytes(image: Image.Image, quality: int = 90, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **kw)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming `width` x `height` (a decompression bomb never gets decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def plant_images(folder: Path) -> dict[str, str]:
    """Every per-image problem, one file each; returns {file name: expected kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}

    def put(name: str, kind: str, data: bytes | None = None, image=None, **save) -> None:
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        else:
            image.save(path, **save)
        _caption(folder, path.stem)
        expected[name] = kind

    base = picture(1)
    put("corrupt_zero.png", "corrupt", b"")
    put("corrupt_text.jpg", "corrupt", b"this is not an image at all\n" * 20)
    put("corrupt_truncated.jpg", "corrupt", _jpeg_bytes(picture(2))[:6000])
    put("corrupt_bomb.png", "corrupt", bomb_png(30000, 30000))
    put("small.png", "too_small", image=picture(3, (400, 300)))
    put("blurry.png", "blurry", image=picture(4).filter(ImageFilter.GaussianBlur(4)))
    put("orig.png", None, image=base)
    put("orig_same_pixels.png", "duplicate", image=base, compress_level=1)
    put("orig_resized.jpg", "near_duplicate", image=base.resize((600, 540)), quality=92)
    put("orig_recompressed.jpg", "near_duplicate", data=_jpeg_bytes(base, 40))
    w, h = base.size
    put("orig_cropped.png", "near_duplicate", image=base.crop((int(w * 0.03), 0, w, int(h * 0.97))))
    put("cmyk.jpg", "color_mode", image=picture(5).convert("CMYK"))
    gray16 = (np.asarray(picture(6).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    put("gray16.png", "color_mode", image=Image.fromarray(gray16))
    put("palette.png", "color_mode", image=picture(7).convert("P", palette=Image.Palette.ADAPTIVE))
    alpha = picture(8).convert("RGBA")
    alpha.putalpha(Image.new("L", alpha.size, 200))
    put("alpha.png", "color_mode", image=alpha)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("rotated.jpg", "exif_rotated", data=_jpeg_bytes(picture(9), exif=exif.tobytes()))
    put("panorama.png", "extreme_aspect", image=picture(10, (4800, 520)))
    expected.pop("orig.png")
    return expected


def plant_captions(folder: Path) -> dict[str, str]:
    """Every per-caption problem on otherwise clean images; returns {image name: kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    long = ", ".join(f"detail number {i} with {w}" for i, w in enumerate("abcdefghijklmnopqrstu"))
    cases = {
        "cap_missing.png": ("no_caption", None),
        "cap_empty.png": ("empty_caption", "  \n"),
        "cap_no_trigger.png": ("no_trigger", "a quiet harbour at dawn"),
        "cap_trigger_late.png": ("no_trigger", f"a quiet harbour at dawn, {TRIGGER}"),
        "cap_long.png": ("caption_too_long", f"{TRIGGER}, {long}, finally the lastword"),
    }
    for i, (name, (_, text)) in enumerate(cases.items()):
        picture(200 + i).save(folder / name)
        if text is not None:
            (folder / name).with_suffix(".txt").write_text(text)
    return {name: kind for name, (kind, _) in cases.items()}


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (relative path -> digest), and of the listing."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    } | {"<names>": ",".join(sorted(str(p.relative_to(folder)) for p in folder.rglob("*")))}
