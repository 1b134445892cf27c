"""Labelled PNG grids: rows are prompts (with their group), columns strengths or checkpoints.

The seed article's test grid: "fix the seed, vary the LoRA strength across columns, and vary
the prompt's subject matter across rows". Pillow only, with its built-in scalable font, so a
grid renders the same on every machine.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from lorafile.files import atomic_path

BACKGROUND = "white"
INK = (20, 20, 20)
GROUP_INK = {"strong": (30, 110, 40), "adjacent": (170, 110, 0), "free": (40, 70, 170)}


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _layout(cell: tuple[int, int]) -> dict:
    """Font size, label column width and header height scaled to the cell size."""
    w, h = cell
    size = max(10, min(h // 10, 28))
    return {"font": size, "label": max(180, w // 2), "header": size * 2 + 8, "pad": 4}


def label_lines(text: str, width_px: int, font_px: int) -> list[str]:
    """`text` wrapped to about `width_px` (the default font is ~0.55 em a character)."""
    chars = max(8, int(width_px / (0.55 * font_px)))
    return textwrap.wrap(text, chars) or [""]


def make_labelled_grid(
    rows: list[list],
    row_labels: list[tuple[str, str]],
    column_labels: list[str],
    title: str,
    out: Path,
) -> Path:
    """Write a grid PNG atomically. `rows[r][c]` is a PIL image (all the same size);
    `row_labels[r]` is (prompt, group); `column_labels[c]` heads column c."""
    from PIL import Image, ImageDraw

    cell = rows[0][0].size
    lay = _layout(cell)
    font, small = _font(lay["font"]), _font(max(9, lay["font"] - 2))
    title_width = int(font.getlength(title)) + 2 * lay["pad"]
    width = max(lay["label"] + cell[0] * len(column_labels), title_width)
    height = lay["header"] * 2 + cell[1] * len(rows)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    draw.text((lay["pad"], lay["pad"]), title, fill=INK, font=font)
    top = lay["header"] * 2
    for c, label in enumerate(column_labels):
        x = lay["label"] + c * cell[0] + lay["pad"]
        draw.text((x, lay["header"] + lay["pad"]), label, fill=INK, font=small)
    for r, (row, (prompt, group)) in enumerate(zip(rows, row_labels, strict=True)):
        y = top + r * cell[1]
        _row_label(draw, (lay["pad"], y + lay["pad"]), prompt, group, lay, small)
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (lay["label"] + c * cell[0], y))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    return out


def _row_label(draw, at: tuple[int, int], prompt: str, group: str, lay: dict, font) -> None:
    x, y = at
    step = lay["font"] + 2
    draw.text((x, y), f"[{group}]", fill=GROUP_INK.get(group, INK), font=font)
    for k, line in enumerate(label_lines(prompt, lay["label"] - 2 * lay["pad"], lay["font"])):
        draw.text((x, y + (k + 1) * step), line, fill=INK, font=font)
