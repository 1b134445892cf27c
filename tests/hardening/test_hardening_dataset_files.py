"""Issue 12 §3: a FIFO (or any file that is not a regular file) named like an image or a
caption in a dataset folder hung `plan` and `train` on its first read. Only regular files are
listed; each command runs in a subprocess under a timeout, so a regression fails, not hangs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hardening_runs import lorafile_subprocess, tiny_recipe_file
from hardening_runs import one_thread as one_thread  # autouse fixture

from lorafile.compiler import dataset_count


def _plant_non_regular_files(data: Path) -> None:
    os.mkfifo(data / "zz_fifo.png")  # an image name: opening it blocks until a writer comes
    os.mkfifo(data / "000_sidecar.txt")  # a caption name next to a real image
    (data / "zz_folder.jpg").mkdir()


@pytest.fixture
def dataset_with_fifos(tiny_sdxl_dir, tmp_path):
    recipe = tiny_recipe_file(tiny_sdxl_dir, tmp_path, images=2)
    image = sorted((tmp_path / "data").glob("*.png"))[0]
    image.with_suffix(".txt").unlink()
    image.rename(tmp_path / "data" / "000_sidecar.png")
    _plant_non_regular_files(tmp_path / "data")
    return recipe


def test_plan_lists_only_regular_files(dataset_with_fifos):
    done = lorafile_subprocess("plan", str(dataset_with_fifos))
    assert done.returncode == 0, done.stderr
    assert ": 2 images, 0 skipped, 1 without captions" in done.stdout  # the FIFO caption: none


def test_train_lists_only_regular_files(dataset_with_fifos, tmp_path):
    done = lorafile_subprocess("train", str(dataset_with_fifos), "-q")
    assert done.returncode == 0, done.stderr
    assert "2 images in" in done.stdout and (tmp_path / "out" / "tiny.safetensors").is_file()


@pytest.mark.parametrize(
    "rule", [dataset_count.NATIVE, dataset_count.KOHYA, dataset_count.SIMPLETUNER]
)
def test_image_counts_skip_fifos_and_folders(tmp_path, rule):
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")  # a link to a file counts
    _plant_non_regular_files(tmp_path)
    found = dataset_count.list_images(tmp_path, rule)
    assert [p.name for p in found] == ["a.png", "link.png"]
