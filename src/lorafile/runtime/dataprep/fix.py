"""`lorafile prep DIR --fix OUT`: a cleaned copy of a dataset in a new folder.

The source is only read. The copy leaves out rejected images (corrupt, too small, blurry,
duplicates), stores every other image upright and as 8-bit RGB (re-encoded only when something
changes; otherwise the file is copied byte for byte), and copies the captions, with the trigger
prepended where the captions must carry it (`--trigger`). Every file is written atomically.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
from lorafile.files import atomic_path, file_in_the_way, real_path, write_text_atomic
from lorafile.runtime.dataprep.caption_checks import starts_with_trigger
from lorafile.runtime.dataprep.images import SIXTEEN_BIT_MODES, to_8bit
from lorafile.runtime.dataprep.prep import PrepReport
from lorafile.runtime.dataprep.settings import REJECTED_KINDS, Entry
from lorafile.runtime.train.data import with_trigger

BACKGROUND = (255, 255, 255)
"""Transparent pixels are put on white (SimpleTuner's choice; right for most cut-outs)."""
SAVE_OPTIONS = {
    "JPEG": {"quality": 95, "subsampling": 0},
    "WEBP": {"lossless": True},
    "PNG": {},
    "BMP": {},
}


@dataclass
class FixResult:
    out: Path
    changes: list[dict] = field(default_factory=list)
    """One per source file: {path, action, why}."""

    def add(self, path: Path, action: str, why: str = "") -> None:
        self.changes.append({"path": str(path), "action": action, "why": why})

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.changes:
            counts[c["action"]] = counts.get(c["action"], 0) + 1
        return counts


def check_output(source: Path, out: Path) -> None:
    """OUT must be a new (or empty) folder outside the source: nothing is overwritten."""
    bag = DiagnosticBag(file=str(out))
    src, dst = real_path(source), real_path(out)
    if dst == src or src in dst.parents:
        bag.error(
            "D831",
            f"`--fix {out}` is inside the dataset folder `{source}`; the copy would become "
            "part of the dataset.",
            "write the cleaned copy to a folder outside the dataset",
        )
    elif (blocker := file_in_the_way(out)) is not None and blocker.name != out.name:
        bag.error(
            "D831",
            f"`--fix {out}` cannot be created: `{blocker}` is a file, not a folder.",
            "name a new folder whose parent folders exist or can be created",
        )
    elif blocker is not None or (out.is_dir() and any(out.iterdir())):
        bag.error(
            "D831",
            f"`--fix {out}` already exists and is not an empty folder; prep never overwrites.",
            "name a new folder, or remove this one first",
        )
    bag.raise_if_errors()


def write_fixed(report: PrepReport, out: Path) -> FixResult:
    """Write the cleaned copy of `report`'s dataset to `out`; return what changed."""
    check_output(report.settings.folder, out)
    out.mkdir(parents=True, exist_ok=True)
    result = FixResult(out)
    for entry in report.entries:
        rejected = sorted(entry.kinds() & REJECTED_KINDS)
        if rejected:
            result.add(entry.path, "left out", ", ".join(rejected))
            continue
        target = out / entry.path.relative_to(report.settings.folder)
        why = _image_changes(entry.facts)
        try:
            if why:
                _write_converted(entry.path, target, entry.facts.format)
                result.add(entry.path, "converted", "; ".join(why))
            else:
                _copy(entry.path, target)
                result.add(entry.path, "copied")
        except OSError as err:
            raise DiagnosticError([_write_error(target, err)]) from None
        _caption(entry, report, out, result)
    return result


def _image_changes(facts) -> list[str]:
    why = []
    if facts.orientation not in (0, 1):
        why.append(f"EXIF orientation {facts.orientation} applied")
    if facts.bit_depth == 16:
        why.append("16 bits scaled to 8")
    if facts.has_alpha:
        why.append("transparency put on white")
    if facts.mode not in ("RGB", "L") or facts.bit_depth == 16:
        why.append(f"{facts.mode} converted to RGB")
    return why


def _write_converted(source: Path, target: Path, fmt: str) -> None:
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
    rgb = to_rgb(upright)
    fmt = fmt if fmt in SAVE_OPTIONS else "PNG"
    with atomic_path(target) as tmp:
        rgb.save(tmp, format=fmt, **SAVE_OPTIONS[fmt])


def to_rgb(image):
    """8-bit RGB: 16-bit grayscale scaled (not clipped), transparency put on `BACKGROUND`."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        image = to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _caption(entry: Entry, report: PrepReport, out: Path, result: FixResult) -> None:
    settings = report.settings
    sidecar = entry.caption_file
    if sidecar is None:
        return
    target = out / sidecar.relative_to(settings.folder)
    if entry.caption_error is not None:
        result.add(sidecar, "not copied", f"{entry.caption_error}: save it as UTF-8 and copy it")
        return
    if entry.caption is None:
        result.add(sidecar, "missing", f"no caption: run `lorafile caption {out}`")
        return
    trigger = settings.trigger if settings.trigger_in_captions else None
    if trigger and entry.caption and not starts_with_trigger(entry.caption, trigger):
        write_text_atomic(target, with_trigger(entry.caption, trigger) + "\n")
        result.add(sidecar, "trigger prepended", f"`{trigger}` added at the start")
        return
    _copy(sidecar, target)
    result.add(sidecar, "copied")


def _write_error(target: Path, err: OSError):
    bag = DiagnosticBag(file=str(target))
    return bag.error(
        "D832",
        f"Cannot write `{target}`: {err.strerror or err}.",
        "check the free space and permissions of the output folder",
    )


def render_changes(result: FixResult) -> str:
    """The change report: counts, then one line per file that did not just get copied."""
    counts = ", ".join(f"{n} {action}" for action, n in sorted(result.counts().items()))
    lines = [f"fix: wrote a cleaned copy to `{result.out}`: {counts}"]
    for c in result.changes:
        if c["action"] != "copied":
            lines.append(f"  {c['action']}: {c['path']}" + (f" ({c['why']})" if c["why"] else ""))
    return "\n".join(lines) + "\n"
