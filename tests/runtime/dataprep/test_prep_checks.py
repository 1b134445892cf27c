"""`lorafile prep`'s checks on datasets with every planted problem, and on a clean one."""

from __future__ import annotations

from pathlib import Path

import pytest
from prep_planted import (
    TRIGGER,
    clean_set,
    detailed,
    picture,
    plant_captions,
    plant_images,
    tree_digest,
)

from lorafile.compiler.dataset_count import KOHYA, SIMPLETUNER
from lorafile.runtime.dataprep.prep import run_prep
from lorafile.runtime.dataprep.report import render_text, to_json
from lorafile.runtime.dataprep.settings import CODES, PrepSettings
from lorafile.runtime.train.data import BucketSpec, read_size


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    clean_set(folder)
    expected = plant_images(folder) | plant_captions(folder)
    before = tree_digest(folder)
    report = run_prep(PrepSettings(folder, trigger=TRIGGER), progress=False)
    assert tree_digest(folder) == before, "prep changed the source folder"
    return folder, expected, report


def by_name(report) -> dict:
    return {entry.path.name: entry for entry in report.entries}


def test_each_planted_problem_is_found_on_its_image_and_nothing_else(planted):
    _, expected, report = planted
    entries = by_name(report)
    for name, kind in expected.items():
        assert entries[name].kinds() == {kind}, (name, entries[name].problems)
        found = next(p for p in entries[name].problems if p.kind == kind)
        assert found.diagnostic.code == CODES[kind] and found.diagnostic.file.endswith(name)


def test_clean_images_and_the_original_of_the_copies_raise_nothing(planted):
    _, expected, report = planted
    quiet = [e for e in report.entries if e.path.name not in expected]
    assert sorted(e.path.name for e in quiet) == [
        *(f"clean_{i:02d}.png" for i in range(6)),
        "orig.png",
    ]
    assert all(not e.problems for e in quiet)


def test_a_clean_dataset_has_no_problem_at_all(tmp_path):
    clean_set(tmp_path, count=15)
    report = run_prep(
        PrepSettings(tmp_path, trigger=TRIGGER, kind="style", batch=2), progress=False
    )
    assert report.all_problems() == [] and report.exit_code == 0
    assert "no problems found" in render_text(report)


def test_corrupt_images_are_exactly_those_the_trainer_cannot_read(planted):
    _, _, report = planted
    for entry in report.entries:
        if "corrupt" in entry.kinds():
            with pytest.raises(Exception):  # noqa: B017 - any decoder error
                read_size(entry.path)
        elif entry.path.name != "corrupt_bomb.png":
            read_size(entry.path)
    assert report.exit_code == 1


def test_messages_say_what_the_trainers_do(planted):
    _, _, report = planted
    entries = by_name(report)

    def message(name):
        return entries[name].problems[0].diagnostic.message

    assert "kohya sd-scripts does not" in message("rotated.jpg")
    assert "nearly white" in message("gray16.png")
    assert "on white" in message("alpha.png")
    assert "removes 13% of the image" in message("panorama.png")
    assert "lastword" in message("cap_long.png") and "cut off" in message("cap_long.png")
    assert "`orig.png`" in message("orig_same_pixels.png")
    assert "but not first" in message("cap_trigger_late.png")
    assert "nowhere" in message("cap_no_trigger.png")


def test_json_has_the_documented_shape(planted):
    folder, _, report = planted
    data = to_json(report)
    assert set(data) >= {"dataset", "images", "buckets", "summary"}
    image = next(i for i in data["images"] if i["path"].endswith("panorama.png"))
    assert set(image) >= {"path", "width", "height", "bucket", "crop", "problems"}
    assert image["bucket"] == [2048, 256] and 0.12 < image["crop"] < 0.14
    assert image["problems"][0]["kind"] == "extreme_aspect"
    assert set(image["problems"][0]) >= {"code", "kind", "severity", "message"}
    kinds = data["summary"]["kinds"]
    assert kinds["corrupt"] == 4 and kinds["near_duplicate"] == 3 and kinds["no_trigger"] == 2
    assert data["summary"]["images"] == len(list(folder.glob("*.png"))) + len(
        list(folder.glob("*.jpg"))
    )


def test_text_groups_by_kind_with_counts_first(planted):
    _, _, report = planted
    text = render_text(report)
    head = text.splitlines()[:2]
    assert "images" in head[0] and "4 errors" in head[1] and "corrupt 4" in head[1]
    assert text.index("corrupt (4):") < text.index("blurry (1):") < text.index("buckets (")
    assert "error[D801]" in text and "warning[D805]" in text


def test_recipe_trigger_is_prepended_so_only_a_trigger_inside_is_a_problem(planted):
    folder, _, _ = planted
    report = run_prep(
        PrepSettings(folder, trigger=TRIGGER, trigger_in_captions=False), progress=False
    )
    entries = by_name(report)
    assert "no_trigger" not in entries["cap_no_trigger.png"].kinds()
    late = entries["cap_trigger_late.png"].problems
    assert [p.kind for p in late] == ["no_trigger"] and "twice" in late[0].diagnostic.message


def test_dataset_level_count_phrase_and_small_bucket(tmp_path):
    for i in range(5):
        picture(300 + i).save(tmp_path / f"img_{i}.png")
        (tmp_path / f"img_{i}.txt").write_text(
            f"{TRIGGER}, a boat {i}, in a loose watercolor painting style"
        )
    picture(310, (1200, 520)).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text(f"{TRIGGER}, a wide harbour")
    report = run_prep(
        PrepSettings(tmp_path, trigger=TRIGGER, kind="character", batch=2), progress=False
    )
    kinds = {p.kind: p for p in report.problems}
    assert set(kinds) == {"image_count", "concept_phrase", "small_bucket"}
    assert "6 usable images; 20-100" in kinds["image_count"].diagnostic.message
    assert '"loose watercolor painting style"' in kinds["concept_phrase"].diagnostic.message
    small = [b for b in report.buckets if b["below_batch"]]
    assert [Path(i["path"]).name for b in small for i in b["images"]] == ["wide.png"]


def test_too_small_uses_half_the_recipe_resolution(tmp_path):
    picture(1, (700, 600)).save(tmp_path / "a.png")
    big = BucketSpec((1536, 1536), lo=512, hi=3072)
    report = run_prep(PrepSettings(tmp_path, captions="trigger", bucketing=big), progress=False)
    assert report.entries[0].kinds() == {"too_small"}
    assert run_prep(PrepSettings(tmp_path, captions="trigger"), progress=False).all_problems() == []


def test_listing_follows_the_trainer(tmp_path):
    picture(1).save(tmp_path / "a.png")
    picture(2).save(tmp_path / "b.Png")
    (tmp_path / "sub").mkdir()
    picture(3).save(tmp_path / "sub" / "c.png")
    picture(4).save(tmp_path / "d.gif")

    def names(**kw):
        report = run_prep(PrepSettings(tmp_path, captions="trigger", **kw), progress=False)
        return sorted(str(e.path.relative_to(tmp_path)) for e in report.entries)

    assert names() == ["a.png", "b.Png"]
    assert names(rule=KOHYA) == ["a.png"]
    assert names(rule=SIMPLETUNER) == ["a.png", "b.Png", "d.gif", "sub/c.png"]


def test_blur_relative_to_the_dataset_median(tmp_path):
    from PIL import ImageFilter

    from lorafile.runtime.dataprep import checks

    for i in range(6):
        detailed(400 + i).save(tmp_path / f"sharp_{i}.png")
    soft = detailed(420).filter(ImageFilter.GaussianBlur(1.2))
    soft.save(tmp_path / "soft.png")
    report = run_prep(PrepSettings(tmp_path, captions="trigger"), progress=False)
    entry = by_name(report)["soft.png"]
    assert entry.facts.sharpness > checks.BLUR_FLOOR  # above the floor: the median decides
    assert entry.kinds() == {"blurry"} and "median" in entry.problems[0].diagnostic.message


def test_a_caption_that_is_not_utf8_is_an_error_not_a_crash(tmp_path):
    """A Latin-1 caption: the trainer refuses it, so prep says so (D815) instead of a
    traceback, names the file and the byte, and leaves the file as it was."""
    clean_set(tmp_path, count=2)
    latin1 = "zqx, un café au lait".encode("latin-1")
    (tmp_path / "clean_01.txt").write_bytes(latin1)
    report = run_prep(PrepSettings(tmp_path, trigger=TRIGGER), progress=False)
    entry = by_name(report)["clean_01.png"]
    assert entry.kinds() == {"unreadable_caption"}
    found = entry.problems[0].diagnostic
    assert found.code == "D815" and found.file.endswith("clean_01.txt")
    assert "byte 0xe9" in found.message and report.exit_code == 1
    assert not by_name(report)["clean_00.png"].problems
    assert (tmp_path / "clean_01.txt").read_bytes() == latin1
