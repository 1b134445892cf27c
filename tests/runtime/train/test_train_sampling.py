"""Every recipe sampler maps to a diffusers scheduler that runs from the SDXL config."""

from __future__ import annotations

import pytest

from lorafile.runtime.models.tiny import TINY_SCHEDULER_CONFIG
from lorafile.runtime.train.sampling import SAMPLERS, make_grid, make_scheduler
from lorafile.spec.models import SAMPLERS as RECIPE_SAMPLERS


def test_every_recipe_sampler_has_a_mapping():
    assert set(SAMPLERS) == set(RECIPE_SAMPLERS)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_steps(name):
    import importlib.util

    import torch

    if name == "lms" and importlib.util.find_spec("scipy") is None:
        from lorafile.compiler.diagnostics import DiagnosticError

        with pytest.raises(DiagnosticError, match="pip install scipy"):
            make_scheduler(name, dict(TINY_SCHEDULER_CONFIG))
        return
    scheduler = make_scheduler(name, dict(TINY_SCHEDULER_CONFIG))
    scheduler.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps[:2]:
        model_input = scheduler.scale_model_input(sample, t)
        out = (
            scheduler.step(torch.zeros_like(model_input), t, sample, generator=g)
            if "generator" in scheduler.step.__code__.co_varnames
            else scheduler.step(torch.zeros_like(model_input), t, sample)
        )
        sample = out.prev_sample
    assert torch.isfinite(sample).all()


def test_a_sampler_whose_package_is_missing_is_t575(monkeypatch):
    import importlib.util

    from lorafile.compiler.diagnostics import DiagnosticError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a)
    )
    with pytest.raises(DiagnosticError) as err:
        make_scheduler("lms", TINY_SCHEDULER_CONFIG)
    found = err.value.diagnostics[0]
    assert found.code == "T575"
    assert found.message == "The sampler `lms` needs the package `scipy`, which is not installed."
    assert found.help == "install it with `pip install scipy`, or choose `sampler euler_a`"


def test_karras_and_sde_options():
    assert make_scheduler("dpmpp_2m_karras", dict(TINY_SCHEDULER_CONFIG)).config.use_karras_sigmas
    assert (
        make_scheduler("dpmpp_sde", dict(TINY_SCHEDULER_CONFIG)).config.algorithm_type
        == "sde-dpmsolver++"
    )


def test_grid_tiles_images(tmp_path):
    from PIL import Image

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 6), (i * 50, 0, 0)).save(paths[-1])
    with Image.open(make_grid(paths, tmp_path / "grid.png")) as grid:
        assert grid.size == (32, 12)
        assert grid.getpixel((0, 6)) == (200, 0, 0)  # the fifth image starts the second row


def test_decode_in_tiles_when_the_gpu_is_short(monkeypatch):
    """A decode that would not fit is done in overlapping tiles: the same image size and
    nearly the same pixels; the VAE's own tiling settings are back afterwards. On a CPU the
    decode is always whole (`needs_tiles` is False)."""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from lorafile.runtime.models.tiny import build_tiny_sdxl
    from lorafile.runtime.train import sampling

    vae = build_tiny_sdxl(seed=0).vae.eval()
    factor = sampling.downscale(vae)
    latents = torch.randn(
        1, 4, 96 // factor, 96 // factor, generator=torch.Generator().manual_seed(0)
    )
    processor = VaeImageProcessor(vae_scale_factor=factor)
    assert sampling.needs_tiles(vae, latents) is False  # CPU
    whole = np.asarray(sampling.decode(vae, processor, latents), dtype=np.float32)
    calls = []
    original = vae.tiled_decode
    monkeypatch.setattr(vae, "tiled_decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(sampling, "needs_tiles", lambda *_: True)
    monkeypatch.setattr(sampling, "TILE_PIXELS", 64)  # 96 px: two overlapping tiles
    before = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    tiled = np.asarray(sampling.decode(vae, processor, latents), dtype=np.float32)
    assert calls and tiled.shape == whole.shape == (96, 96, 3)
    # Each tile normalises its own group statistics: close, not equal (10.1 of 255 measured
    # for this random tiny VAE with 64-pixel tiles).
    assert np.abs(tiled - whole).mean() < 0.06 * 255, np.abs(tiled - whole).mean()
    assert (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size) == before
