"""The training options' maths against hand computations (plain Python and numpy arithmetic
on small tensors), not against the code under test: Huber thresholds and losses, debiased
estimation, timestep ranges and biases, multi-resolution, input-perturbation and offset noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lorafile.runtime.train import diffusion
from lorafile.spec.models import TimestepBias

SDXL_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
SCHEDULER = diffusion.training_scheduler(SDXL_SCHEDULE)
BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
ALPHA_BARS = np.cumprod(1.0 - BETAS)
T = [0, 10, 250, 999]


class EchoUNet(torch.nn.Module):
    """Predicts its own noisy input (or zeros): a UNet whose output is known by hand."""

    dtype = torch.float32

    def __init__(self, zero: bool = False):
        super().__init__()
        self.zero = zero

    def forward(self, noisy, t, embeds, added_cond_kwargs, return_dict):
        return (torch.zeros_like(noisy) if self.zero else noisy.clone(),)


COND = {"embeds": torch.zeros(4, 1, 1), "pooled": torch.zeros(4, 1), "time_ids": None}


def toy_latents() -> torch.Tensor:
    return torch.linspace(-1.5, 1.5, 4 * 4 * 2 * 2).reshape(4, 4, 2, 2)


# ---- Huber ----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["constant", "exponential", "snr"])
def test_huber_thresholds_follow_kohyas_schedules(schedule):
    c = 0.1
    got = diffusion.huber_thresholds(SCHEDULER, torch.tensor(T), schedule, c).double().numpy()
    for value, t in zip(got, T, strict=True):
        if schedule == "constant":
            expected = c
        elif schedule == "exponential":
            expected = math.exp(math.log(c) / 1000 * t)  # exp(-alpha t), alpha = -ln(c) / T
        else:
            sigma = math.sqrt((1 - ALPHA_BARS[t]) / ALPHA_BARS[t])
            expected = (1 - c) / (1 + sigma) ** 2 + c
        assert value == pytest.approx(expected, rel=1e-5)


def test_pseudo_huber_losses_by_hand():
    pred = torch.tensor([[0.0, 1.0, -3.0]])
    target = torch.zeros(1, 3)
    c = 0.5
    huber = diffusion.elementwise_loss(pred, target, "huber", torch.tensor([c]))
    smooth = diffusion.elementwise_loss(pred, target, "smooth_l1", torch.tensor([c]))
    l2 = diffusion.elementwise_loss(pred, target, "l2")
    for i, x in enumerate([0.0, 1.0, -3.0]):
        root = math.sqrt(x * x + c * c) - c
        assert huber[0, i].item() == pytest.approx(2 * c * root)
        assert smooth[0, i].item() == pytest.approx(2 * root)
        assert l2[0, i].item() == pytest.approx(x * x)


def test_a_huber_step_computes_its_loss_per_sample():
    """A zero prediction against the noise: 2c_t(sqrt(n**2 + c_t**2) - c_t), averaged."""
    latents, t = toy_latents(), torch.tensor(T)
    options = diffusion.StepOptions(loss="huber", huber_schedule="exponential", huber_c=0.2)
    loss, _ = diffusion.denoising_loss(
        EchoUNet(zero=True), SCHEDULER, latents, COND, torch.Generator().manual_seed(3),
        timesteps=t, options=options,
    )  # fmt: skip
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3)).double()
    for i, step in enumerate(T):
        c = 0.2 ** (step / 1000)
        expected = (2 * c * (torch.sqrt(noise[i] ** 2 + c * c) - c)).mean().item()
        assert loss[i].item() == pytest.approx(expected, rel=1e-5)


# ---- loss weights -------------------------------------------------------------------------


def test_debiased_estimation_weights_by_hand():
    eps = diffusion.debiased_weights(SCHEDULER, torch.tensor(T), "epsilon").double().numpy()
    v = diffusion.debiased_weights(SCHEDULER, torch.tensor(T), "v").double().numpy()
    for i, t in enumerate(T):
        snr = min(ALPHA_BARS[t] / (1 - ALPHA_BARS[t]), 1000.0)
        assert eps[i] == pytest.approx(1 / math.sqrt(snr), rel=1e-4)
        assert v[i] == pytest.approx(1 / (snr + 1), rel=1e-4)
    assert eps[0] == pytest.approx(1 / math.sqrt(1000.0))  # t = 0 has SNR > 1000: capped


# ---- timesteps ----------------------------------------------------------------------------


def test_later_bias_weights_by_hand():
    bias = TimestepBias(strategy="later", multiplier=2.0, portion=0.25)
    weights = diffusion.timestep_weights(1000, 0, 1000, bias).numpy()
    assert weights[0] == pytest.approx(1 / 1250) and weights[999] == pytest.approx(2 / 1250)
    assert weights[749] == pytest.approx(1 / 1250) and weights[750] == pytest.approx(2 / 1250)


def test_range_bias_inside_a_timestep_range_by_hand():
    bias = TimestepBias(strategy="range", begin=200, end=300, multiplier=3.0)
    weights = diffusion.timestep_weights(1000, 100, 500, bias).numpy()
    # 100 timesteps at 1 (100..199), 100 at 3 (200..299), 200 at 1 (300..499): total 600.
    assert weights[:100].sum() == 0 and weights[500:].sum() == 0
    assert weights[150] == pytest.approx(1 / 600) and weights[250] == pytest.approx(3 / 600)
    assert weights.sum() == pytest.approx(1.0)


def test_timesteps_stay_in_the_range():
    options = diffusion.StepOptions(min_timestep=200, max_timestep=210)
    drawn = diffusion.draw_timesteps(4000, 1000, torch.Generator().manual_seed(1), "cpu", options)
    assert int(drawn.min()) == 200 and int(drawn.max()) == 209
    biased = diffusion.StepOptions(
        min_timestep=0, max_timestep=1000,
        timestep_bias=TimestepBias(strategy="earlier", multiplier=9.0, portion=0.1),
    )  # fmt: skip
    drawn = diffusion.draw_timesteps(20000, 1000, torch.Generator().manual_seed(1), "cpu", biased)
    # P(t < 100) = 9 * 100 / (9 * 100 + 900) = 0.5
    assert float((drawn < 100).float().mean()) == pytest.approx(0.5, abs=0.02)


# ---- noise --------------------------------------------------------------------------------


def test_offset_noise_is_applied_with_its_probability():
    latents = torch.zeros(2, 4, 3, 3)
    for seed in range(6):
        options = diffusion.StepOptions(noise_offset=0.5, noise_offset_probability=0.5)
        got = diffusion.draw_noise(latents, torch.Generator().manual_seed(seed), options=options)
        g = torch.Generator().manual_seed(seed)
        expected = torch.randn(latents.shape, generator=g)
        if torch.rand((), generator=g).item() < 0.5:
            expected = expected + 0.5 * torch.randn((2, 4, 1, 1), generator=g)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    never = diffusion.StepOptions(noise_offset=0.5, noise_offset_probability=0.0)
    plain = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    got = diffusion.draw_noise(latents, torch.Generator().manual_seed(0), options=never)
    torch.testing.assert_close(got, plain)


def test_multires_noise_by_hand():
    """iterations 2, discount 0.5 on 8x8: noise + 1 * same-size noise + 0.5 * upsampled
    (8 / r)-size noise, r in [2, 4), over the standard deviation."""
    import torch.nn.functional as F

    latents = torch.zeros(1, 2, 8, 8)
    options = diffusion.StepOptions(multires_iterations=2, multires_discount=0.5)
    got = diffusion.draw_noise(latents, torch.Generator().manual_seed(4), options=options)
    g = torch.Generator().manual_seed(4)
    total = torch.randn(latents.shape, generator=g)
    torch.rand((), generator=g)  # r for i = 0 (r**0 = 1: full size)
    total = total + torch.randn(latents.shape, generator=g)
    r = 2 + 2 * torch.rand((), generator=g).item()
    side = int(8 / r)
    coarse = torch.randn((1, 2, side, side), generator=g)
    total = total + 0.5 * F.interpolate(coarse, size=(8, 8), mode="bilinear")
    torch.testing.assert_close(got, total / total.std())
    assert got.std().item() == pytest.approx(1.0)


def test_input_perturbation_reaches_the_unet_but_not_the_target():
    """An echo UNet predicts its input sqrt(a) x + sqrt(1 - a)(n + g e); the target is n."""
    latents, t, gamma = toy_latents(), torch.tensor(T), 0.3
    loss, _ = diffusion.denoising_loss(
        EchoUNet(), SCHEDULER, latents, COND, torch.Generator().manual_seed(8),
        timesteps=t, options=diffusion.StepOptions(ip_noise_gamma=gamma),
    )  # fmt: skip
    g = torch.Generator().manual_seed(8)
    noise = torch.randn(latents.shape, generator=g).double()
    extra = torch.randn(latents.shape, generator=g).double()
    for i, step in enumerate(T):
        a = ALPHA_BARS[step]
        seen = math.sqrt(a) * latents[i].double() + math.sqrt(1 - a) * (noise[i] + gamma * extra[i])
        assert loss[i].item() == pytest.approx(((seen - noise[i]) ** 2).mean().item(), rel=1e-4)


def test_a_recipe_with_every_option_trains(tiny_sdxl_dir, tmp_path):
    from lorafile.runtime.demo import make_dataset
    from lorafile.runtime.train.loop import TrainOptions, train
    from lorafile.spec.models import Cache, Train
    from train_runs import plan_for, tiny_recipe

    torch.set_num_threads(1)
    make_dataset(tmp_path / "data", 2, seed=5)
    settings = Train(
        steps=2, lr=1e-3, optimizer="adamw", precision="no", checkpointing=False, seed=2,
        cache=Cache(latents=True, text=True), noise_offset=0.05, noise_offset_probability=0.5,
        multires_noise_iterations=4, ip_noise_gamma=0.1, min_timestep=100, max_timestep=900,
        timestep_bias=TimestepBias(strategy="later", multiplier=2.0), loss="smooth_l1",
        debiased_estimation=True, min_snr_gamma=5,
    )  # fmt: skip
    recipe = tiny_recipe(
        tiny_sdxl_dir / "tiny_sdxl.safetensors", tmp_path / "data", tmp_path / "out",
        train=settings, sample=None,
    )  # fmt: skip
    result = train(plan_for(recipe), TrainOptions(quiet=True))
    assert math.isfinite(result.last_loss) and result.adapter.is_file()
