"""Counting images the way each trainer does, and the steps an epoch-counted run has.

The files are empty: counting looks at names only, so no file needs to be a valid image.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafile.compiler import dataset_count as dc
from lorafile.runtime.train import data
from lorafile.spec.models import Base, Dataset, Output, Recipe, Regularization, Train

NAMES = [
    "a.png", "b.PNG", "c.Png", "d.jpg", "e.JPEG", "f.webp", "g.bmp", "h.gif", "i.tiff",
    ".hidden.png", "caption.txt", "k.png.txt", "l.avif",
]  # fmt: skip


def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def names(paths: list[Path], root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in paths}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = touch(tmp_path / "set", *NAMES)
    touch(root / "sub", "deep.png")
    touch(root / ".ipynb_checkpoints", "copy.png")
    return root


def test_kohya_globs_its_list_in_lower_and_upper_case_only(folder):
    # sd-scripts IMAGE_EXTENSIONS: .png and .PNG, not .Png; a glob skips dot files; one level.
    found = names(dc.list_images(folder, dc.KOHYA), folder)
    assert found == {"a.png", "b.PNG", "d.jpg", "e.JPEG", "f.webp", "g.bmp"}


def test_simpletuner_walks_subfolders_and_takes_every_pillow_format(folder):
    found = names(dc.list_images(folder, dc.SIMPLETUNER), folder)
    assert {"c.Png", "h.gif", "i.tiff", "l.avif", ".hidden.png", "sub/deep.png"} <= found
    assert not {"caption.txt", "k.png.txt"} & found
    assert ".ipynb_checkpoints/copy.png" not in found  # a folder SimpleTuner never enters


def test_native_rule_is_the_trainers_own_listing(folder):
    expected = {"a.png", "b.PNG", "c.Png", "d.jpg", "e.JPEG", "f.webp", "g.bmp", ".hidden.png"}
    assert names(data.list_images(folder), folder) == expected
    assert data.list_images(folder) == dc.list_images(folder, dc.NATIVE)


def recipe(tmp_path: Path, *, images=(12,), repeats=(8,), reg=(), ratio=1.0, **train) -> Recipe:
    """A recipe over fresh folders holding `images[i]` files (reg: `reg[j]` files)."""
    datasets = []
    for i, (n, r) in enumerate(zip(images, repeats, strict=True)):
        touch(tmp_path / f"d{i}", *(f"{k}.png" for k in range(n)))
        datasets.append(Dataset(path=str(tmp_path / f"d{i}"), repeats=r))
    regs = []
    for j, n in enumerate(reg):
        touch(tmp_path / f"r{j}", *(f"{k}.jpg" for k in range(n)))
        regs.append(Regularization(path=str(tmp_path / f"r{j}"), class_prompt="c", ratio=ratio))
    return Recipe(
        name="count",
        base=Base(path="/m.safetensors"),
        datasets=tuple(datasets),
        regularization=tuple(regs),
        train=Train(**{"epochs": 10, **train}),
        output=Output(path="/o"),
    )


@pytest.mark.parametrize(
    ("kwargs", "per_epoch"),
    [
        ({"batch": 1}, 96),  # 12 x 8
        ({"batch": 2}, 48),
        ({"batch": 5}, 20),  # ceil(96 / 5)
        ({"batch": 2, "accumulate": 4}, 12),
        ({"batch": 3, "accumulate": 5}, 7),  # ceil(ceil(96 / 3) / 5)
        ({"images": (12, 3), "repeats": (8, 1), "batch": 2}, 50),  # 48 + ceil(3 / 2)
        ({"images": (12, 1), "repeats": (8, 1), "batch": 2}, 48),  # 1 < batch: dropped
        ({"reg": (30,), "batch": 2}, 63),  # each regularisation image once: 48 + 15
    ],
)
def test_simpletuner_steps_per_epoch(tmp_path, kwargs, per_epoch):
    r = recipe(tmp_path, **kwargs)
    run = dc.simpletuner_steps(r, dc.count_recipe(r, dc.SIMPLETUNER))
    assert (run.per_epoch, run.total) == (per_epoch, per_epoch * 10)
    assert run.how.endswith(f"= {per_epoch} steps per epoch × 10 epochs = {run.total} steps")
    assert run.exact == (r.train.batch == 1)


@pytest.mark.parametrize(
    ("kwargs", "gpus", "per_epoch"),
    [
        ({"batch": 2}, 1, 48),
        ({"batch": 2}, 2, 24),  # sd-scripts divides by the processes
        ({"reg": (30,), "batch": 2}, 1, 96),  # 96 subject + 96 re-used regularization samples
        ({"reg": (500,), "batch": 2}, 1, 96),  # more reg images than needed: still 1:1
        ({"reg": (30,), "ratio": 0.5, "batch": 1}, 1, 144),  # native: 96 + 48
    ],
)
def test_recipe_steps_follow_kohya_and_the_native_trainer(tmp_path, kwargs, gpus, per_epoch):
    r = recipe(tmp_path, **kwargs)
    run = dc.recipe_steps(r, dc.count_recipe(r, dc.KOHYA), gpus)
    assert run.per_epoch == per_epoch


def test_counts_are_unknown_when_a_folder_is_missing(tmp_path):
    r = recipe(tmp_path, reg=(4,))
    r = r.model_copy(
        update={"regularization": (Regularization(path="missing/reg", class_prompt="c"),)}
    )
    counts = dc.count_recipe(r, dc.SIMPLETUNER, base_dir=tmp_path)
    assert [f.folder for f in counts.missing] == [tmp_path / "missing" / "reg"]
    assert dc.simpletuner_steps(r, counts) is None
    assert dc.recipe_steps(r, counts) is None


def test_relative_paths_are_counted_next_to_the_recipe(tmp_path):
    touch(tmp_path / "imgs", "a.png", "b.png")
    r = recipe(tmp_path).model_copy(update={"datasets": (Dataset(path="imgs"),)})
    assert dc.count_recipe(r, dc.SIMPLETUNER, base_dir=tmp_path).folders[0].images == 2


def test_steps_counted_runs_need_no_count(tmp_path):
    r = recipe(tmp_path, steps=100, epochs=None)
    assert dc.simpletuner_steps(r, dc.count_recipe(r, dc.SIMPLETUNER)) is None


def test_an_image_name_that_is_a_symlink_loop_is_not_listed(tmp_path):
    """DirEntry.is_file raises ELOOP for a looping link; no trainer can read it: not an image."""
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    for rule in (dc.NATIVE, dc.KOHYA, dc.SIMPLETUNER):
        assert [p.name for p in dc.list_images(tmp_path, rule)] == ["a.png"]
