"""Rendering a prep report: text for people (house diagnostic style), JSON for tools."""

from __future__ import annotations

import os

from lorafile.compiler.diagnostics import render_all
from lorafile.runtime.dataprep.prep import PrepReport
from lorafile.runtime.dataprep.settings import CODES

PER_KIND_SHOWN = 20
"""Text output shows this many findings of each kind, then "... and N more"."""
NAMES_PER_BUCKET = 6


def to_json(report: PrepReport) -> dict:
    """`--format json`: {dataset, images, buckets, problems, summary}."""
    s = report.settings
    return {
        "dataset": {
            "path": str(s.folder),
            "trainer": s.trainer,
            "captions": s.captions,
            "trigger": s.trigger,
            "resolution": list(s.bucketing.resolution),
            "min_side": s.min_short_side,
            "batch": s.batch,
            "kind": s.kind,
        },
        "images": [_image(e) for e in report.entries],
        "buckets": report.buckets,
        "problems": [p.to_dict() for p in report.problems],
        "summary": summary(report),
    }


def _image(entry) -> dict:
    facts = entry.facts
    return {
        "path": str(entry.path),
        "width": facts.width if facts.ok else None,
        "height": facts.height if facts.ok else None,
        "bucket": list(entry.bucket) if entry.bucket else None,
        "crop": round(entry.crop_share, 4),
        "caption": entry.caption,
        "rejected": entry.rejected,
        "problems": [p.to_dict() for p in entry.problems],
    }


def summary(report: PrepReport) -> dict:
    problems = report.all_problems()
    counts = report.kind_counts()
    return {
        "images": len(report.entries),
        "usable": sum(1 for e in report.entries if not e.rejected),
        "rejected": sum(1 for e in report.entries if e.rejected),
        "errors": sum(1 for p in problems if str(p.severity) == "error"),
        "warnings": sum(1 for p in problems if str(p.severity) == "warning"),
        "infos": sum(1 for p in problems if str(p.severity) == "info"),
        "kinds": {kind: counts[kind] for kind in CODES if counts[kind]},
    }


def render_text(report: PrepReport) -> str:
    """Counts first, then the findings grouped by kind, then the bucket preview."""
    s, sm = report.settings, summary(report)
    trigger = f", trigger `{s.trigger}`" if s.trigger else ""
    lines = [
        f"prep `{s.folder}` ({s.trainer} trainer's listing, captions `{s.captions}`{trigger}): "
        f"{sm['images']} images, {sm['usable']} usable, {sm['rejected']} rejected",
        f"  {_count(sm['errors'], 'error')}, {_count(sm['warnings'], 'warning')}, "
        f"{_count(sm['infos'], 'note')}"
        + (": " + ", ".join(f"{k} {n}" for k, n in sm["kinds"].items()) if sm["kinds"] else ""),
    ]
    problems = report.all_problems()
    for kind in CODES:
        found = [p.diagnostic for p in problems if p.kind == kind]
        if found:
            lines += ["", f"{kind} ({len(found)}):", render_all(found, PER_KIND_SHOWN)]
    lines += ["", *bucket_lines(report)]
    if not problems:
        lines += ["", "no problems found"]
    return "\n".join(lines) + "\n"


def bucket_lines(report: PrepReport) -> list[str]:
    s = report.settings
    res = "x".join(map(str, s.bucketing.resolution))
    lines = [f"buckets (resolution {res}, batch {s.batch}, repeats {s.repeats}):"]
    if not report.buckets:
        return [*lines, "  none (no usable image)"]
    for b in report.buckets:
        crops = [i["crop"] for i in b["images"]]
        flag = "  fewer images than the batch" if b["below_batch"] else ""
        lines.append(
            f"  {b['size'][0]}x{b['size'][1]:<6}{b['count']:>5} images, crop "
            f"{min(crops):.0%} to {max(crops):.0%}{flag}"
        )
        shown = b["images"][:NAMES_PER_BUCKET]
        names = ", ".join(f"{os.path.basename(i['path'])} {i['crop']:.0%}" for i in shown)
        more = f", +{b['count'] - len(shown)} more" if b["count"] > len(shown) else ""
        lines.append(f"      {names}{more}")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"
