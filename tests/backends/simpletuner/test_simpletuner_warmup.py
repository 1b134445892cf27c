"""Epochs and steps for SimpleTuner: a warmup percentage of an epoch-counted run (T550, T536),
regularization and the length of an epoch (T551), and keeping all checkpoints (T542).

SimpleTuner's `lr_warmup_steps` is an int, so lorafile counts the images (file names only: the
dummy files here are empty) and writes the steps, or, when the folders are not here, reports T536
with what to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from backend_case import materialize
from lorafile.backends.base import get
from lorafile.cli import main
from lorafile.compiler import dataset_count
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.compiler.parse import parse_recipe
from repo_paths import TESTS

INK = TESTS / "fixtures" / "simpletuner" / "_shared" / "ink_locon.recipe"


def ink_copy(tmp_path: Path, images: int = 12) -> Path:
    """The shared ink_locon recipe (epochs 10, batch 2, repeats 8, warmup 5%) over a temp folder."""
    folder = tmp_path / "comic_ink"
    folder.mkdir()
    for i in range(images):
        (folder / f"page{i:02}.png").write_bytes(b"")
        (folder / f"page{i:02}.txt").write_text("inkst, a comic page")
    text = INK.read_text()
    assert '"/data/comic_ink"' in text
    recipe = tmp_path / "ink_locon.recipe"
    recipe.write_text(text.replace('"/data/comic_ink"', '"comic_ink"'))  # next to the recipe
    return recipe


def compile_st(recipe: Path, out: Path, *extra: str) -> int:
    return main(["compile", str(recipe), "--target", "simpletuner", "-o", str(out), *extra])


def config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def test_shared_ink_recipe_compiles_without_loss_where_the_images_are(tmp_path, capsys):
    recipe = ink_copy(tmp_path)
    assert compile_st(recipe, tmp_path / "st") == 0
    err = capsys.readouterr().err
    # 12 images x 8 repeats / batch 2 = 48 steps per epoch x 10 epochs = 480; 5% is 24.
    assert config(tmp_path / "st")["lr_warmup_steps"] == 24
    assert config(tmp_path / "st")["num_train_epochs"] == 10
    assert "warning[T550]" in err and "T536" not in err
    assert "12 images × 8 repeats / batch 2 = 48 batches" in err
    assert "48 steps per epoch × 10 epochs = 480 steps; 5% of 480 is 24" in err
    assert "holds only while the folders keep these images" in err


def test_the_count_follows_the_folder(tmp_path, capsys):
    recipe = ink_copy(tmp_path, images=15)
    (tmp_path / "comic_ink" / "notes.md").write_text("not an image")
    assert compile_st(recipe, tmp_path / "st") == 0
    assert config(tmp_path / "st")["lr_warmup_steps"] == 30  # 5% of 10 x 60


def test_missing_folder_is_a_loss_whose_help_says_what_to_do(tmp_path, capsys):
    assert compile_st(INK, tmp_path / "st") == 1
    err = capsys.readouterr().err
    assert "error[T536]" in err and "`/data/comic_ink` does not exist here" in err
    # 5% x 10 epochs x 8 repeats / batch 2 = 2 warmup steps per image.
    assert "`warmup N` with N ≈ 2 × the images in `/data/comic_ink`" in err
    assert "compile where the dataset folders are" in err and "--allow-lossy" in err
    assert not (tmp_path / "st").exists()
    assert compile_st(INK, tmp_path / "st", "--allow-lossy") == 0
    assert config(tmp_path / "st")["lr_warmup_steps"] == 0


def test_a_folder_too_small_or_too_large_to_count_is_named(tmp_path, capsys, monkeypatch):
    recipe = ink_copy(tmp_path, images=1)  # 1 image x 8 repeats fills batches: counted
    assert compile_st(recipe, tmp_path / "st") == 0
    (tmp_path / "comic_ink" / "page00.png").unlink()  # only the caption file is left
    assert compile_st(recipe, tmp_path / "st") == 1
    assert "the folders have fewer images than one batch" in capsys.readouterr().err
    monkeypatch.setattr(dataset_count, "MAX_ENTRIES", 5)  # `dataset "/"` must not walk the disk
    (tmp_path / "big").mkdir()
    ink_copy(tmp_path / "big", images=3)
    assert compile_st(tmp_path / "big" / "ink_locon.recipe", tmp_path / "st") == 1
    err = capsys.readouterr().err
    assert f"`{tmp_path / 'big' / 'comic_ink'}` holds more than 5 files and folders" in err


def reg_recipe(tmp_path: Path, reg_images: int | None, warmup: str = "warmup 10%") -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(10):
        (photos / f"p{i}.jpg").write_bytes(b"")
    if reg_images is not None:
        (tmp_path / "reg" / "more").mkdir(parents=True)
        for i in range(reg_images):
            sub = "more/" if i % 2 else ""  # SimpleTuner walks subfolders
            (tmp_path / "reg" / f"{sub}r{i}.png").write_bytes(b"")
    path = tmp_path / "reg.recipe"
    path.write_text(
        'recipe "reg_case"\nbase sdxl "/m.safetensors"\n'
        'dataset "photos" {\n    repeats 5\n}\n'
        'regularization "reg" {\n    class "woman"\n}\n'
        f"train {{\n    epochs 4\n    batch 2\n    lr 1e-4 cosine {warmup}\n}}\n"
        'output "/o"\n'
    )
    return path


def test_regularisation_images_count_once_per_epoch_in_simpletuner(tmp_path, capsys):
    assert compile_st(reg_recipe(tmp_path, 30), tmp_path / "st") == 0
    err = capsys.readouterr().err
    # SimpleTuner: ceil(10 x 5 / 2) + ceil(30 / 2) = 40 per epoch x 4 = 160; 10% = 16.
    assert config(tmp_path / "st")["lr_warmup_steps"] == 16
    assert "30 regularization images / batch 2 = 15 batches" in err
    # The recipe (kohya, native) means 50 + 50 samples: 50 steps per epoch, 200 in all.
    assert "warning[T551]" in err and "160 steps in SimpleTuner" in err
    assert "against 200 in the recipe's meaning" in err and "`steps 200`" in err


def test_missing_regularisation_folder_blocks_the_count(tmp_path, capsys):
    assert compile_st(reg_recipe(tmp_path, None), tmp_path / "st") == 1
    err = capsys.readouterr().err
    assert "error[T536]" in err and f"`{tmp_path / 'reg'}` does not exist here" in err
    # 10% x 4 epochs / batch 2 = 0.2 steps per sample; photos are seen 5 times per epoch.
    assert "N ≈ 1 × the images in `photos` + 0.2 × the images in `reg`" in err
    assert "warning[T551]" in err and "can be a different number of steps" in err


def test_warmup_in_steps_needs_no_count(tmp_path, capsys):
    assert compile_st(reg_recipe(tmp_path, None, warmup="warmup 100"), tmp_path / "st") == 0
    assert config(tmp_path / "st")["lr_warmup_steps"] == 100


def test_written_files_read_back_as_the_projection(tmp_path):
    recipe = parse_recipe(ink_copy(tmp_path).read_text())
    backend = get("simpletuner", allow_lossy=False)
    backend.options["base_dir"] = tmp_path
    bag = DiagnosticBag()
    files = backend.write(recipe, bag).files
    assert not bag.has_errors
    root = materialize(files, tmp_path / "written")
    back = get("simpletuner").read(root / "config.json", DiagnosticBag())
    assert back.train.warmup is not None and back.train.warmup.value == 24
    assert back.model_copy(update={"passthrough": {}}) == backend.project(recipe).model_copy(
        update={"passthrough": {}}
    )


def test_counting_keeps_the_compile_path_free_of_torch(tmp_path):
    recipe = ink_copy(tmp_path)
    code = (
        "import sys; from lorafile.cli import main; "
        f"rc = main(['compile', {str(recipe)!r}, '--target', 'simpletuner', "
        f"'-o', {str(tmp_path / 'st')!r}]); "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'peft', 'PIL') "
        "if m in sys.modules]; sys.exit(rc or (3 if bad else 0))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_keep_all_help_counts_the_checkpoints(tmp_path, capsys):
    recipe = ink_copy(tmp_path)  # 48 steps per epoch, as above
    text = recipe.read_text()
    recipe.write_text(
        text.replace("epochs 10", "steps 300").replace("every 1 epochs", "every 2 epochs")
    )
    assert compile_st(recipe, tmp_path / "st") == 1
    err = capsys.readouterr().err
    assert "error[T542]" in err
    assert "at most 150 checkpoints, about 3 with the images there now (48 steps per epoch)" in err
    recipe.write_text(text.replace("every 1 epochs", "every 100 steps"))
    assert compile_st(recipe, tmp_path / "st") == 1
    assert "the run is 480 steps (" in (err := capsys.readouterr().err)
    assert "about 4 checkpoints" in err
