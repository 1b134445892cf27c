"""Every recipe sampler maps to a diffusers scheduler that runs from the SDXL config."""

from __future__ import annotations

import pytest

from lorafile.runtime.sampling import SAMPLERS, make_grid, make_scheduler
from lorafile.runtime.tiny import TINY_SCHEDULER_CONFIG
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
