"""v-prediction with zero-terminal-SNR, natively: the schedule, the loss target, a tiny run.

The expected values are computed here by hand (numpy / plain torch arithmetic), following the
paper (Lin et al. 2024, Algorithm 1), not by calling the code under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lorafile.runtime.train import diffusion

# SDXL base 1.0's schedule: scaled_linear betas from 0.00085 to 0.012 over 1000 steps.
SDXL_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def hand_zero_snr_alpha_bars() -> np.ndarray:
    """Lin et al. 2024, Algorithm 1, in float64: shift sqrt(alpha_bar) so the last is 0, scale
    it so the first is unchanged, square."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    return root**2


def test_the_rescaled_schedule_ends_in_pure_noise():
    scheduler = diffusion.training_scheduler(SDXL_SCHEDULE, "v", zero_terminal_snr=True)
    alpha_bars = scheduler.alphas_cumprod.double().numpy()
    assert alpha_bars[-1] == 0.0
    np.testing.assert_allclose(alpha_bars, hand_zero_snr_alpha_bars(), rtol=1e-4, atol=1e-7)
    plain = diffusion.training_scheduler(SDXL_SCHEDULE).alphas_cumprod
    assert plain[-1] > 1e-3  # SDXL's own schedule leaves signal at the last step
    assert scheduler.config.prediction_type == "v_prediction"


def test_the_loss_target_is_the_velocity():
    """With a UNet that predicts zeros, the loss is the mean square of v, computed by hand."""
    scheduler = diffusion.training_scheduler(SDXL_SCHEDULE, "v", zero_terminal_snr=True)
    alpha_bars = hand_zero_snr_alpha_bars()
    latents = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2) / 10 - 1
    timesteps = torch.tensor([999, 250])

    class ZeroUNet(torch.nn.Module):
        dtype = torch.float32

        def forward(self, noisy, t, embeds, added_cond_kwargs, return_dict):
            return (torch.zeros_like(noisy),)

    cond = {"embeds": torch.zeros(2, 1, 1), "pooled": torch.zeros(2, 1), "time_ids": None}
    loss, _ = diffusion.denoising_loss(
        ZeroUNet(),
        scheduler,
        latents,
        cond,
        torch.Generator().manual_seed(5),
        prediction="v",
        timesteps=timesteps,
    )
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    expected = []
    for i, t in enumerate(timesteps.tolist()):
        a = float(alpha_bars[t])
        v = a**0.5 * noise[i].double() - (1 - a) ** 0.5 * latents[i].double()
        expected.append(float((v**2).mean()))
    # At the last step v = -latents exactly: the model must predict the image from pure noise.
    assert expected[0] == pytest.approx(float((latents[0].double() ** 2).mean()))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-4)


def test_min_snr_weights_stay_finite_at_zero_snr():
    scheduler = diffusion.training_scheduler(SDXL_SCHEDULE, "epsilon", zero_terminal_snr=True)
    t = torch.tensor([999, 0])
    eps = diffusion.min_snr_weights(scheduler, t, 5.0, "epsilon")
    v = diffusion.min_snr_weights(scheduler, t, 5.0, "v")
    assert torch.isfinite(eps).all() and eps[0] == 1.0
    assert v[0] == 0.0  # min(0, 5) / (0 + 1)


def test_samples_use_trailing_timesteps_from_the_last_step():
    from lorafile.runtime.train.sampling import make_scheduler

    overrides = diffusion.schedule_overrides("v", True)
    scheduler = make_scheduler("euler_a", {**SDXL_SCHEDULE}, **overrides)
    scheduler.set_timesteps(4)
    assert scheduler.config.timestep_spacing == "trailing"
    assert scheduler.config.prediction_type == "v_prediction"
    assert int(scheduler.timesteps[0]) == 999  # "leading" would start at 750


def test_a_vpred_zero_snr_recipe_trains_and_samples(tiny_sdxl_dir, tmp_path):
    from lorafile.runtime.demo import make_dataset
    from lorafile.runtime.train.loop import TrainOptions, train
    from lorafile.spec.models import Base, Interval, Resolution, Sample
    from train_runs import plan_for, short_train, tiny_recipe

    torch.set_num_threads(1)
    make_dataset(tmp_path / "data", 2, seed=3)
    recipe = tiny_recipe(
        tiny_sdxl_dir / "tiny_sdxl.safetensors",
        tmp_path / "data",
        tmp_path / "out",
        base=Base(
            path=str(tiny_sdxl_dir / "tiny_sdxl.safetensors"),
            prediction="v",
            zero_terminal_snr=True,
        ),
        train=short_train(min_snr_gamma=5),
        sample=Sample(
            every=Interval(every=2),
            steps=2,
            size=Resolution(width=64, height=64),
            seed=1,
            prompts=("zqx",),
        ),
    )
    plan = plan_for(recipe)
    assert plan["resolved"]["sample"]["guidance_rescale"] == 0.7
    assert plan["resolved"]["sample"]["schedule"]["timestep_spacing"] == "trailing"
    result = train(plan, TrainOptions(quiet=True))
    assert (tmp_path / "out" / "tiny.safetensors").is_file()
    assert np.isfinite(result.last_loss)
    assert result.samples and all(Path(p).is_file() for p in result.samples)


def test_lint_warns_about_zero_snr_with_epsilon():
    from lorafile.compiler.lint import lint_recipe
    from lorafile.compiler.parse import parse_recipe

    text = (
        'recipe "z"\nbase sdxl "/m.safetensors" {\n    zero_terminal_snr on\n}\n'
        'dataset "/d"\ntrain {\n    steps 10\n}\noutput "/o"\n'
    )
    report = lint_recipe(parse_recipe(text))
    assert "L324" in [d.code for d in report.diagnostics]
    vpred = parse_recipe(
        text.replace("zero_terminal_snr on", "prediction v\n    zero_terminal_snr on")
    )
    assert "L324" not in [d.code for d in lint_recipe(vpred).diagnostics]
