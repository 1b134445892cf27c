"""The numerics of one SDXL denoising training step (DDPM schedule, as the reference trainers).

Shapes: latents (B, 4, H/8, W/8); prompt embeds (B, 77, te1+te2 width); pooled (B, te2 proj);
time ids (B, 6). Randomness comes from an explicit generator, never the global RNG, so a step's
noise and timesteps are a function of (seed, position) and a resumed run repeats them exactly.
"""

from __future__ import annotations


def to_device(tensor, device):
    """Move a host tensor to `device` without making the host wait for the GPU.

    On CUDA a plain `.to(device)` from pageable memory synchronises the stream (the host waits
    for every queued kernel); from pinned memory with `non_blocking=True` it is queued like a
    kernel. Pinned entries of the caches are used as they are; others are copied into pinned
    memory first (PyTorch's caching host allocator reuses those blocks). Elsewhere: `.to`.
    """
    if getattr(device, "type", str(device).split(":")[0]) != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def step_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one micro-batch's random numbers: a function of its place in the data order."""
    return (seed * 1_000_003 + epoch * 100_003 + index) % 2**63


def step_generator(seed: int, epoch: int, index: int):
    """A CPU generator private to one micro-batch (seed, epoch, batch index).

    The eager step draws every random tensor on the host from it and moves it with
    `to_device`: the values are the same on every device (a CPU run and a GPU run draw the
    same noise), and a resume needs no device generator state. The static-buffer step
    (runtime/train/graphs.py) reseeds one generator on its device with `step_seed` instead.
    """
    import torch

    return torch.Generator("cpu").manual_seed(step_seed(seed, epoch, index))


def draw_noise(latents, generator, noise_offset: float = 0.0):
    """Gaussian noise like `latents`, drawn on the generator's device; noise offset adds a
    per-channel constant (`offset * N(0,1)` of shape (B, C, 1, 1)), which lets the model learn
    very dark/bright images."""
    import torch

    where = generator.device
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32, device=where)
    if noise_offset:
        offset = torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=where)
        noise += noise_offset * offset
    return to_device(noise, latents.device)


def draw_timesteps(batch: int, num_timesteps: int, generator, device):
    import torch

    drawn = torch.randint(0, num_timesteps, (batch,), generator=generator, device=generator.device)
    return to_device(drawn, device)


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
    channels_last=False,
    dtype=None,
):
    """Per-sample MSE (B,) of the UNet's prediction, and the timesteps used.

    `cond` holds `embeds`, `pooled`, `time_ids`. `timesteps` may be fixed (evaluation).
    `channels_last`: hand the UNet NHWC latents (faster convolutions on CUDA tensor cores;
    the UNet's weights must be channels_last too, see Trainer._speed_up).
    `dtype`: the UNet's weight dtype if the caller knows it. diffusers' `unet.dtype` walks
    every submodule (get_parameter_dtype): with peft layers that was a fifth of a tiny
    model's step, so it is read at most once per call here.
    """
    import torch
    import torch.nn.functional as F

    noise = draw_noise(latents, generator, noise_offset)
    if timesteps is None:
        timesteps = draw_timesteps(
            latents.shape[0], scheduler.config.num_train_timesteps, generator, latents.device
        )
    dtype = unet.dtype if dtype is None else dtype
    noisy = scheduler.add_noise(latents, noise, timesteps).to(dtype)
    if channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    pred = unet(
        noisy,
        timesteps,
        cond["embeds"].to(dtype),
        added_cond_kwargs={
            "text_embeds": cond["pooled"].to(dtype),
            "time_ids": cond["time_ids"],
        },
        return_dict=False,
    )[0]
    target = target_for(scheduler, latents, noise, timesteps, prediction)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return per_sample, timesteps


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes (`torch.compile` docs). "reduce-overhead" and "max-autotune" record
each input shape as a CUDA graph (cudagraph trees) and replay it: one launch per step instead
of thousands of kernel launches; they keep a static copy of each shape's inputs and outputs."""

CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


def compile_unet(unet, buckets: int, mode: str = "default") -> bool:
    """`torch.compile` the UNet in place (`Module.compile`: parameter names, hence the
    adapter's state dict and export, stay the same). `dynamic=False` specialises one graph per
    input shape: each bucket shape (and sampling's batch) compiles once, on its first step,
    which takes minutes for SDXL; the cache limit is raised so no bucket falls back to eager.
    Returns whether the mode uses CUDA graphs (the loop then marks each step's start)."""
    import torch

    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; use one of {COMPILE_MODES}")
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 2 * buckets + 4))  # train + sample shapes
    if mode == "default":
        unet.compile(dynamic=False)
    else:
        unet.compile(dynamic=False, mode=mode)
    return mode in CUDA_GRAPH_MODES
