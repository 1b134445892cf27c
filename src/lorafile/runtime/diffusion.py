"""The numerics of one SDXL denoising training step (DDPM schedule, as the reference trainers).

Shapes: latents (B, 4, H/8, W/8); prompt embeds (B, 77, te1+te2 width); pooled (B, te2 proj);
time ids (B, 6). Randomness comes from an explicit generator, never the global RNG, so a step's
noise and timesteps are a function of (seed, position) and a resumed run repeats them exactly.
"""

from __future__ import annotations


def step_generator(seed: int, epoch: int, index: int):
    """A CPU generator private to one micro-batch (seed, epoch, batch index)."""
    import torch

    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + epoch * 100_003 + index) % 2**63)


def draw_noise(latents, generator, noise_offset: float = 0.0):
    """Gaussian noise like `latents`; noise offset adds a per-channel constant
    (`offset * N(0,1)` of shape (B, C, 1, 1)), which lets the model learn very dark/bright images."""
    import torch

    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if noise_offset:
        noise += noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    return noise.to(latents.device)


def draw_timesteps(batch: int, num_timesteps: int, generator, device):
    import torch

    return torch.randint(0, num_timesteps, (batch,), generator=generator).to(device)


def target_for(scheduler, latents, noise, timesteps, prediction: str):
    """What the UNet must predict: the noise (epsilon) or the velocity (v-prediction)."""
    if prediction == "v":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def snr(scheduler, timesteps):
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas / (1.0 - alphas)


def min_snr_weights(scheduler, timesteps, gamma: float | None, prediction: str):
    """Min-SNR-gamma loss weights (Hang et al. 2023), as diffusers' text-to-image LoRA script:
    min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v-prediction."""
    import torch

    if gamma is None:
        return torch.ones_like(timesteps, dtype=torch.float32)
    s = snr(scheduler, timesteps)
    clipped = torch.clamp(s, max=gamma)
    return clipped / (s + 1.0) if prediction == "v" else clipped / s


def denoising_loss(
    unet,
    scheduler,
    latents,
    cond: dict,
    generator,
    *,
    prediction="epsilon",
    noise_offset=0.0,
    timesteps=None,
):
    """Per-sample MSE (B,) of the UNet's prediction, and the timesteps used.

    `cond` holds `embeds`, `pooled`, `time_ids`. `timesteps` may be fixed (evaluation).
    """
    import torch.nn.functional as F

    noise = draw_noise(latents, generator, noise_offset)
    if timesteps is None:
        timesteps = draw_timesteps(
            latents.shape[0], scheduler.config.num_train_timesteps, generator, latents.device
        )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = unet(
        noisy.to(unet.dtype),
        timesteps,
        cond["embeds"].to(unet.dtype),
        added_cond_kwargs={
            "text_embeds": cond["pooled"].to(unet.dtype),
            "time_ids": cond["time_ids"],
        },
        return_dict=False,
    )[0]
    target = target_for(scheduler, latents, noise, timesteps, prediction)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return per_sample, timesteps
