"""Dataset scan, captions, buckets and the seeded epoch order (torch-free parts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lorafile.runtime.train import data


def _image(path: Path, size=(96, 96), color=(200, 10, 10)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def test_buckets_follow_kohya_area_rule():
    buckets = data.make_buckets((1024, 1024), 256, 2048, 64)
    assert (1024, 1024) in buckets
    assert (832, 1216) in buckets and (1216, 832) in buckets  # SDXL's familiar portrait/landscape
    assert all(w * h <= 1024 * 1024 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((2000, 1000), (1408, 704)), ((1000, 1000), (1024, 1024)), ((600, 1200), (704, 1408))],
)
def test_assign_bucket_picks_closest_aspect(size, expected):
    buckets = data.make_buckets((1024, 1024), 256, 2048, 64)
    assert data.assign_bucket(size, buckets, (1024, 1024), 64) == expected


def test_no_upscale_keeps_small_images_small():
    buckets = data.make_buckets((1024, 1024), 256, 2048, 64)
    assert data.assign_bucket((500, 300), buckets, (1024, 1024), 64, upscale=False) == (448, 256)


def test_cover_and_crop_centres():
    assert data.cover_and_crop(200, 100, 64, 64) == (128, 64, 32, 0)


def test_captions_from_sidecar_filename_and_trigger(tmp_path):
    img = _image(tmp_path / "red_ball-1.png")
    (tmp_path / "red_ball-1.txt").write_text("a red\n ball\n")
    assert data.caption_for(img, "txt")[0] == "a red ball"
    assert data.caption_for(img, "filename")[0] == "red ball 1"
    assert data.caption_for(img, "caption") == ("", tmp_path / "red_ball-1.caption")
    assert data.caption_for(img, "trigger") == ("", None)
    assert data.with_trigger("a red ball", "zqx") == "zqx, a red ball"
    assert data.with_trigger("zqx, a red ball", "zqx") == "zqx, a red ball"
    assert data.with_trigger("", "zqx") == "zqx"


def test_scan_skips_and_lists_corrupt_images(tmp_path):
    for i in range(3):
        _image(tmp_path / f"ok{i}.png")
        (tmp_path / f"ok{i}.txt").write_text(f"thing {i}")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = (tmp_path / "ok0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    spec = data.BucketSpec((96, 96), lo=64, hi=128, step=32)
    scan = data.scan_folder(tmp_path, captions="txt", trigger="zqx", source=0, bucketing=spec)
    assert sorted(Path(p).name for p, _ in scan.skipped) == ["broken.png", "truncated.png"]
    assert [it.caption for it in scan.items] == ["zqx, thing 0", "zqx, thing 1", "zqx, thing 2"]
    assert data.check_enough(scan, str(tmp_path)) is None
    assert "at least 5" in data.check_enough(scan, str(tmp_path), minimum=5)


def test_mostly_unreadable_folder_stops(tmp_path):
    _image(tmp_path / "ok.png")
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"junk")
    spec = data.BucketSpec((96, 96), lo=64, hi=128, step=32)
    scan = data.scan_folder(tmp_path, captions="trigger", trigger="zqx", source=0, bucketing=spec)
    assert len(scan.items) == 1
    assert "wrong folder" in data.check_enough(scan, str(tmp_path))


def _items(n_subject: int, n_reg: int) -> list[data.ImageItem]:
    mk = lambda i, reg, b: data.ImageItem(f"{i}.png", str(i), 96, 96, "c", b, 0, reg)  # noqa: E731
    subject = [mk(i, False, (96, 96) if i % 2 else (128, 64)) for i in range(n_subject)]
    return subject + [mk(100 + i, True, (96, 96)) for i in range(n_reg)]


def test_epoch_order_is_seeded_bucketed_and_complete():
    items = _items(6, 0)
    kw = dict(repeats=[3], reg_ratio=0.0, batch=2, seed=5, flip=[True])
    first = data.epoch_batches(items, epoch=0, **kw)
    assert first == data.epoch_batches(items, epoch=0, **kw)  # a pure function of the seed
    assert first != data.epoch_batches(items, epoch=1, **kw)
    seen = sorted(s.index for b in first for s in b)
    assert seen == sorted(list(range(6)) * 3)  # every image `repeats` times
    assert all(len({items[s.index].bucket for s in b}) == 1 for b in first)  # one bucket per batch
    assert any(s.flip for b in first for s in b) and not all(s.flip for b in first for s in b)
    assert len(first) == data.batches_per_epoch(items, [3], 0.0, 2)


def test_regularization_fills_ratio_of_slots():
    items = _items(4, 3)
    batches = data.epoch_batches(
        items, repeats=[2], reg_ratio=0.5, batch=1, seed=0, epoch=0, flip=[False]
    )
    reg = [s for b in batches for s in b if items[s.index].is_reg]
    assert len(reg) == 4  # half of the 8 subject samples
    assert len(batches) == data.batches_per_epoch(items, [2], 0.5, 1)


def test_caption_dropout_and_shuffle_keep_tokens():
    caption = "zqx, a, b, c, d, e"
    kw = dict(seed=1, epoch=0)
    assert (
        data.caption_for_step(caption, shuffle=False, keep_tokens=0, dropout=1.0, position=0, **kw)
        == ""
    )
    shuffled = {
        data.caption_for_step(caption, shuffle=True, keep_tokens=1, dropout=0.0, position=p, **kw)
        for p in range(20)
    }
    assert len(shuffled) > 1
    assert all(
        s.startswith("zqx, ") and sorted(s.split(", ")) == sorted(caption.split(", "))
        for s in shuffled
    )


def test_time_ids_are_original_crop_target():
    item = data.ImageItem("x.png", "h", 200, 100, "c", (64, 64), 0)
    assert data.time_ids(item) == (100, 200, 0, 32, 64, 64)


def test_hue_shift_changes_colour_not_geometry(tmp_path):
    import torch

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "a.png")
    item = data.ImageItem(str(tmp_path / "a.png"), "h", 64, 64, "c", (64, 64), 0)
    plain, ids = data.load_pixels(item)
    shifted, ids2 = data.load_pixels(item, hue_shift=0.03)
    assert ids == ids2 and plain.shape == shifted.shape == (3, 64, 64)
    assert not torch.equal(plain, shifted)
    assert torch.equal(shifted, data.load_pixels(item, hue_shift=0.03)[0])


def test_exif_rotated_photo_is_bucketed_upright(tmp_path):
    """A portrait photo stored landscape with EXIF orientation 6 (a quarter turn) is sized,
    bucketed and cropped as the upright portrait that the loader delivers, not stretched."""
    stored = Image.new("RGB", (96, 64), (200, 30, 30))  # pixels stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "portrait.jpg", exif=exif)
    assert data.read_size(tmp_path / "portrait.jpg") == (64, 96)
    plain = Image.new("RGB", (96, 64))
    plain.save(tmp_path / "landscape.jpg")
    assert data.read_size(tmp_path / "landscape.jpg") == (96, 64)
