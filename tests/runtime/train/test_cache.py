"""Latent and text-encoder caches: keyed by content and settings, never stale."""

from __future__ import annotations

from PIL import Image

from lorafile.runtime.train import cache, data
from train_runs import one_thread as one_thread  # autouse fixture


def _dataset(folder, captions):
    folder.mkdir()
    for i, caption in enumerate(captions):
        Image.new("RGB", (64 + 32 * (i % 2), 64), (50 * i, 100, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)


def _scan(folder, resolution):
    spec = data.BucketSpec((resolution, resolution), lo=64, hi=128, step=32)
    return data.scan_folder(folder, captions="txt", trigger="zqx", source=0, bucketing=spec).items


def _fill(tiny, items, root):
    latents, text = cache.TensorCache(root / "latents"), cache.TensorCache(root / "text")
    vae_id = cache.model_fingerprint(tiny.vae)
    te_id = cache.model_fingerprint(tiny.text_encoder, tiny.text_encoder_2)
    needed = {(i, flip) for i in range(len(items)) for flip in (False, True)}
    cache.fill_latents(latents, items, needed, tiny.vae, vae_id)
    encoders = (tiny.text_encoder, tiny.text_encoder_2)
    cache.fill_text(
        text,
        [it.caption for it in items],
        (tiny.tokenizer, tiny.tokenizer_2),
        encoders,
        te_id,
        None,
    )
    return latents, text


def test_cache_invalidates_exactly_the_affected_entries(tiny_sdxl, tmp_path):
    _dataset(tmp_path / "d", ["a cat", "a dog", "a bird"])
    root = tmp_path / "cache"
    latents, text = _fill(tiny_sdxl, _scan(tmp_path / "d", 96), root)
    assert (latents.misses, text.misses) == (6, 3)  # 3 images x (flipped, not), 3 captions
    assert len(list((root / "latents").glob("*.safetensors"))) == 6

    # Unchanged: everything comes from disk (fresh cache objects, so nothing from memory).
    latents, text = _fill(tiny_sdxl, _scan(tmp_path / "d", 96), root)
    assert (latents.misses, text.misses, latents.hits, text.hits) == (0, 0, 6, 3)

    # One caption changed: exactly one text entry is recomputed, no latent.
    (tmp_path / "d" / "1.txt").write_text("a horse")
    latents, text = _fill(tiny_sdxl, _scan(tmp_path / "d", 96), root)
    assert (latents.misses, text.misses, text.hits) == (0, 1, 2)

    # Resolution changed: the images whose bucket changed get new latents, captions are kept.
    items_64 = _scan(tmp_path / "d", 64)
    moved = sum(
        a.bucket != b.bucket for a, b in zip(items_64, _scan(tmp_path / "d", 96), strict=True)
    )
    assert moved == 3
    latents, text = _fill(tiny_sdxl, items_64, root)
    assert (latents.misses, latents.hits, text.misses) == (6, 0, 0)

    # An edited image (new content hash) invalidates only its own two latents.
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "d" / "0.png")
    latents, _ = _fill(tiny_sdxl, _scan(tmp_path / "d", 64), root)
    assert (latents.misses, latents.hits) == (2, 4)


def test_cached_entries_match_fresh_encoding(tiny_sdxl, tmp_path):
    import torch

    _dataset(tmp_path / "d", ["a cat"])
    items = _scan(tmp_path / "d", 64)
    latents, text = _fill(tiny_sdxl, items, tmp_path / "c")
    vae_id = cache.model_fingerprint(tiny_sdxl.vae)
    entry = latents.get(cache.latent_key(items[0], False, vae_id))
    pixels, _ = data.load_pixels(items[0])
    mean, std = cache.encode_latents(tiny_sdxl.vae, pixels[None])
    assert torch.equal(entry["mean"], mean[0]) and torch.equal(entry["std"], std[0])
    assert entry["mean"].shape == (4, 8, 8)
    te_id = cache.model_fingerprint(tiny_sdxl.text_encoder, tiny_sdxl.text_encoder_2)
    t = text.get(cache.text_key("zqx, a cat", te_id, None))
    assert t["embeds"].shape == (77, 96) and t["pooled"].shape == (64,)  # 32+64 wide, TE2 pooled


def test_fingerprint_changes_with_weights(tiny_sdxl):
    import torch

    before = cache.model_fingerprint(tiny_sdxl.vae)
    with torch.no_grad():
        next(tiny_sdxl.vae.parameters()).add_(1.0)
    assert cache.model_fingerprint(tiny_sdxl.vae) != before
