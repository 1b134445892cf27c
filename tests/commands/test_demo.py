"""`lorafile demo`: the README's main job, end to end, and the learning acceptance check."""

from __future__ import annotations

import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _restore_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_demo_runs_everything_and_the_adapter_learns(tmp_path):
    from lorafile.commands.demo import run_demo
    from lorafile.compiler.parse import parse_recipe

    root = tmp_path / "demo"
    demo = run_demo(root)
    assert demo["status"] == {
        "check": 0,
        "lint": 0,
        "compile kohya": 0,
        "compile simpletuner": 0,
        "compile native": 0,
    }
    # Learning: held-out images, trigger captions, fixed noise and timesteps; at least 20% lower.
    assert demo["after"] <= 0.8 * demo["before"], (demo["before"], demo["after"])

    result = demo["result"]
    assert result.steps == 100 and result.adapter.is_file()
    assert (root / "model" / "tiny-sdxl" / "model_index.json").is_file()
    assert (root / "model" / "tiny-sdxl.safetensors").is_file()
    assert len(list((root / "dataset" / "train").glob("*.png"))) == 12
    parse_recipe((root / "demo.recipe").read_text())
    for name in (
        "kohya/config.toml",
        "kohya/dataset.toml",
        "simpletuner/config.json",
        "native/plan.json",
    ):
        assert (root / "compiled" / name).is_file(), name
    assert list(result.log_dir.glob("events.out.tfevents.*"))
    grids = sorted((result.out / "samples").glob("step-*/grid.png"))
    assert [g.parent.name for g in grids] == ["step-000050", "step-000100"]
    with Image.open(grids[-1]) as grid:
        assert grid.size == (128, 64)
    report = demo["report"]  # `lorafile eval` on the run: the page and every image it shows
    assert report == root / "eval" / "index.html" and (root / "eval" / "report.json").is_file()
    for name in ("grids/step-000050.png", "grids/final.png", "grids/checkpoints.png", "loss.svg"):
        assert (root / "eval" / name).is_file(), name


def test_demo_refuses_a_non_empty_folder(tmp_path):
    import argparse

    from lorafile.commands.demo import run
    from lorafile.compiler.diagnostics import DiagnosticError

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DiagnosticError, match="not empty"):
        run(argparse.Namespace(output=tmp_path, steps=1, force=False))
    assert (tmp_path / "keep.txt").read_text() == "mine"
