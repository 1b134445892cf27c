"""`lorafile prep --fix OUT`: the cleaned copy, the untouched source, and a copy that trains."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from prep_planted import TRIGGER, clean_set, picture, plant_captions, plant_images, tree_digest

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.dataprep.fix import render_changes, write_fixed
from lorafile.runtime.dataprep.prep import run_prep
from lorafile.runtime.dataprep.settings import REJECTED_KINDS, PrepSettings

UNFIXABLE = {"no_caption", "empty_caption", "caption_too_long", "extreme_aspect"}
"""What a cleaned copy may still report: only a person can write or shorten a caption."""


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fix")
    source, out = root / "source", root / "out"
    clean_set(source)
    expected = plant_images(source) | plant_captions(source)
    before = tree_digest(source)
    report = run_prep(PrepSettings(source, trigger=TRIGGER), progress=False)
    result = write_fixed(report, out)
    assert tree_digest(source) == before, "--fix changed the source folder"
    return source, out, expected, result


def test_rejected_images_are_left_out_and_the_rest_copied(fixed):
    source, out, expected, result = fixed
    rejected = {name for name, kind in expected.items() if kind in REJECTED_KINDS}
    assert rejected and not any((out / name).exists() for name in rejected)
    for name in expected.keys() - rejected:
        assert (out / name).is_file(), name
    assert (out / "orig.png").read_bytes() == (source / "orig.png").read_bytes()
    assert {
        c["path"].rsplit("/", 1)[-1] for c in result.changes if c["action"] == "left out"
    } == rejected


def test_converted_images_are_upright_8bit_rgb(fixed):
    source, out, _, _ = fixed
    with Image.open(source / "rotated.jpg") as stored, Image.open(out / "rotated.jpg") as upright:
        assert upright.size == (stored.height, stored.width)
        assert upright.getexif().get(0x0112, 1) == 1
    for name in ("cmyk.jpg", "gray16.png", "palette.png", "alpha.png", "rotated.jpg"):
        with Image.open(out / name) as image:
            assert image.mode == "RGB", name
    with Image.open(out / "gray16.png") as image:
        gray = np.asarray(image, dtype=np.float32)
    with Image.open(source / "gray16.png") as image:
        original = np.asarray(image, dtype=np.float32) / 257
    assert abs(gray[..., 0].mean() - original.mean()) < 1.0  # scaled, not clipped to white


def test_captions_are_copied_with_the_trigger_prepended(fixed):
    source, out, _, result = fixed
    assert (out / "cap_no_trigger.txt").read_text() == f"{TRIGGER}, a quiet harbour at dawn\n"
    assert (out / "clean_00.txt").read_bytes() == (source / "clean_00.txt").read_bytes()
    assert not (out / "cap_missing.txt").exists()
    text = render_changes(result)
    assert "trigger prepended" in text and "left out" in text and "converted" in text


def test_the_cleaned_copy_is_clean_under_prep(fixed):
    _, out, _, _ = fixed
    before = tree_digest(out)
    report = run_prep(PrepSettings(out, trigger=TRIGGER), progress=False)
    kinds = {p.kind for p in report.all_problems()}
    assert kinds <= UNFIXABLE, kinds
    assert report.exit_code == 0
    assert tree_digest(out) == before


def test_fix_never_overwrites_or_writes_inside_the_source(tmp_path):
    clean_set(tmp_path / "src", count=2)
    report = run_prep(PrepSettings(tmp_path / "src"), progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for out in (tmp_path / "full", tmp_path / "src" / "clean"):
        with pytest.raises(DiagnosticError) as err:
            write_fixed(report, out)
        assert err.value.diagnostics[0].code == "D831"
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "src" / "clean").exists()


def test_fix_under_a_file_or_onto_a_symlink_loop_is_d831(tmp_path):
    clean_set(tmp_path / "src", count=1)
    report = run_prep(PrepSettings(tmp_path / "src"), progress=False)
    (tmp_path / "file").write_text("mine")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for out, says in ((tmp_path / "file" / "clean", "is a file, not a folder"),
                      (tmp_path / "loop", "already exists")):  # fmt: skip
        with pytest.raises(DiagnosticError) as err:
            write_fixed(report, out)
        assert err.value.diagnostics[0].code == "D831" and says in err.value.diagnostics[0].message
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.slow
def test_the_cleaned_copy_trains(tmp_path, tiny_sdxl_dir):
    import torch

    from lorafile.runtime.train.loop import TrainOptions, train
    from lorafile.spec.models import Cache
    from train_runs import plan_for, short_train, tiny_recipe

    source = tmp_path / "source"
    clean_set(source, count=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    picture(50).save(source / "rotated.jpg", exif=exif.tobytes())
    (source / "rotated.txt").write_text("a tilted harbour")
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    picture(100).save(source / "copy.png")  # same pixels as clean_00.png
    report = run_prep(PrepSettings(source, trigger=TRIGGER), progress=False)
    write_fixed(report, tmp_path / "clean")
    assert sorted(p.name for p in (tmp_path / "clean").glob("*.*g")) == [
        "clean_00.png",
        "clean_01.png",
        "clean_02.png",
        "rotated.jpg",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = tiny_recipe(
            tiny_sdxl_dir / "tiny_sdxl.safetensors",
            tmp_path / "clean",
            tmp_path / "out",
            train=short_train(cache=Cache(latents=False, text=False)),
            sample=None,
        )
        plan = plan_for(recipe)
        assert not plan["datasets"][0]["skipped"]
        result = train(plan, TrainOptions(quiet=True))
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 2 and result.adapter.is_file()


def test_fix_does_not_copy_a_caption_it_cannot_read(tmp_path):
    clean_set(tmp_path / "src", count=2)
    (tmp_path / "src" / "clean_00.txt").write_bytes(b"zqx, caf\xe9")
    report = run_prep(PrepSettings(tmp_path / "src"), progress=False)
    result = write_fixed(report, tmp_path / "out")
    assert (tmp_path / "out" / "clean_00.png").is_file()
    assert not (tmp_path / "out" / "clean_00.txt").exists()
    assert (tmp_path / "out" / "clean_01.txt").read_text() == (
        tmp_path / "src" / "clean_01.txt"
    ).read_text()
    assert "not copied" in render_changes(result)
