"""Grids, the loss curve and the HTML page, on synthetic images and events (no model)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lorafile.runtime.evaluate.curves import plot_loss, read_scalars, smooth
from lorafile.runtime.evaluate.grid import make_labelled_grid
from lorafile.runtime.evaluate.report import SCORE_COLUMNS, render_html


def _solid(color) -> Image.Image:
    return Image.new("RGB", (64, 48), color)


def test_grid_places_cells_after_the_labels(tmp_path):
    rows = [[_solid("red"), _solid("blue")], [_solid("green"), _solid("black")]]
    labels = [("zqx, a dog", "strong"), ("a dog", "free")]
    out = make_labelled_grid(rows, labels, ["strength 0", "strength 1"], "t", tmp_path / "g.png")
    with Image.open(out) as grid:
        grid.load()
        label_width, header = 180, 2 * (10 * 2 + 8)  # _layout for 48-pixel cells
        assert grid.size == (label_width + 2 * 64, header + 2 * 48)
        assert grid.getpixel((label_width + 10, header + 10)) == (255, 0, 0)
        assert grid.getpixel((label_width + 64 + 10, header + 48 + 10)) == (0, 0, 0)
        assert grid.getpixel((label_width + 64 + 10, header + 10)) == (0, 0, 255)
        # the label column carries ink (the prompt text), not only background
        crop = grid.crop((0, header, label_width, header + 48)).convert("L")
        assert np.asarray(crop).min() < 128


def test_grid_widens_for_a_long_title(tmp_path):
    title = "a title much wider than one small column of sixty-four pixels " * 2
    out = make_labelled_grid([[_solid("red")]], [("p", "free")], ["s"], title, tmp_path / "g.png")
    with Image.open(out) as grid:
        assert grid.size[0] > 180 + 64


def test_loss_curve_reads_events_and_plots_svg(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "logs"))
    for step in range(1, 6):
        writer.add_scalar("train/loss", 1.0 / step, step)
    writer.close()
    points = read_scalars(tmp_path / "logs")
    assert [s for s, _ in points] == [1, 2, 3, 4, 5]
    assert points[1][1] == 0.5
    svg = plot_loss(points, [3], tmp_path / "loss.svg")
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text
    assert (
        read_scalars(tmp_path / "missing") == [] and plot_loss([], [], tmp_path / "x.svg") is None
    )


def test_smoothing_is_tensorboards_debiased_ema():
    assert smooth([2.0, 4.0], 0.5) == [2.0, (0.5 * 0.5 * 2 + 0.5 * 4) / 0.75]


def test_page_escapes_prompts_and_links_relatively():
    scores = {key: 0.5 for key, _, _ in SCORE_COLUMNS}
    report = {
        "target": {"kind": "file", "path": "x.safetensors"},
        "base": "m",
        "settings": {"sampler": "euler_a", "steps": 4, "cfg": 7.0, "size": [64, 64],
                     "seed": 1, "strengths": [0.0, 1.0], "device": "cpu", "negative": ""},
        "prompts": [{"text": "<script>alert(1)</script>", "group": "strong", "seed": 1}],
        "checkpoints": [{"name": "x", "step": None, "file": "x.safetensors",
                         "grid": "grids/x.png", "images": {}, "scores": {"1": scores}}],
        "headline": "1",
        "cross_grid": "grids/checkpoints.png",
        "best": {"checkpoint": "x", "sentence": "`x` has the best trade-off"},
        "loss_curve": None,
        "recipe": None,
        "run": None,
        "resolved": None,
        "training_images": 0,
    }  # fmt: skip
    page = render_html(report)
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert 'src="grids/x.png"' in page and 'src="grids/checkpoints.png"' in page
    assert "http://" not in page and "https://" not in page  # works from disk, offline
