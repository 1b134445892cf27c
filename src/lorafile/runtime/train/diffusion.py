"""The numerics of one SDXL denoising training step (DDPM schedule, as the reference trainers).

Shapes: latents (B, 4, H/8, W/8); prompt embeds (B, 77, te1+te2 width); pooled (B, te2 proj);
time ids (B, 6). Randomness comes from an explicit generator, never the global RNG, so a step's
noise and timesteps are a function of (seed, position) and a resumed run repeats them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorafile.compiler.diagnostics import error_summary, fail


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


@dataclass(frozen=True)
class StepOptions:
    """The recipe's noise, timestep and loss settings as one training step uses them
    (`from_recipe`); the defaults are a plain DDPM step with an L2 loss."""

    prediction: str = "epsilon"
    noise_offset: float = 0.0
    noise_offset_probability: float = 1.0
    multires_iterations: int | None = None
    multires_discount: float = 0.3
    ip_noise_gamma: float | None = None
    min_timestep: int = 0
    max_timestep: int | None = None
    """None: the schedule's length."""
    timestep_bias: object = None
    """A spec TimestepBias, or None."""
    loss: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1

    @classmethod
    def from_recipe(cls, recipe) -> StepOptions:
        t = recipe.train
        return cls(
            prediction=recipe.base.prediction,
            noise_offset=t.noise_offset,
            noise_offset_probability=t.noise_offset_probability,
            multires_iterations=t.multires_noise_iterations,
            multires_discount=t.multires_noise_discount,
            ip_noise_gamma=t.ip_noise_gamma,
            min_timestep=t.min_timestep,
            max_timestep=t.max_timestep,
            timestep_bias=t.timestep_bias,
            loss=t.loss,
            huber_schedule=t.huber_schedule,
            huber_c=t.huber_c,
        )


def draw_noise(latents, generator, noise_offset: float = 0.0, options: StepOptions | None = None):
    """Gaussian noise like `latents`, drawn on the generator's device (the eager step's host
    generator, or the static step's device generator), then moved to the latents' device.

    Noise offset adds a per-channel constant (`offset * N(0,1)` of shape (B, C, 1, 1)), which
    lets the model learn very dark/bright images; with a probability below 1 a whole micro-batch
    gets it or not (one uniform draw, as SimpleTuner). Multi-resolution noise is added after
    it, as kohya does (`pyramid_noise`). A random draw happens only for a setting that is on,
    so turning nothing on leaves every earlier run's noise unchanged."""
    import torch

    options = options or StepOptions(noise_offset=noise_offset)
    where = generator.device
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32, device=where)
    offset = options.noise_offset
    probability = options.noise_offset_probability
    # A host read of a random draw: the static step leaves this setting to the eager step.
    skip = offset and probability < 1.0
    if skip and float(torch.rand((), generator=generator, device=where)) >= probability:
        offset = 0.0
    if offset:
        noise += offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=where)
    if options.multires_iterations:
        noise = pyramid_noise(
            noise, generator, options.multires_iterations, options.multires_discount
        )
    return to_device(noise, latents.device)


def pyramid_noise(noise, generator, iterations: int, discount: float):
    """Multi-resolution noise (J. Whitaker, "Multi-Resolution Noise for Diffusion Model
    Training", 2023; kohya's `pyramid_noise_like`): for i = 1..iterations-1, noise of size
    (H, W) / r**i with r uniform in [2, 4) is upsampled bilinearly and added with weight
    discount**i, stopping once a side reaches 1; the sum is divided by its standard deviation
    (over the whole batch) to be unit variance again. The i = 0 layer of kohya's loop has
    r**0 = 1 and adds discount**0 = 1 full-size noise: kept, for the same distribution."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = noise.shape
    for i in range(iterations):
        r = 2.0 + 2.0 * float(torch.rand((), generator=generator, device=generator.device))
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        layer = torch.randn(
            (b, c, hn, wn), generator=generator, dtype=noise.dtype, device=generator.device
        )
        noise = noise + F.interpolate(layer, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def timestep_weights(num_timesteps: int, min_timestep: int = 0, max_timestep: int | None = None,
                     bias=None):  # fmt: skip
    """Sampling weights of each timestep, or None for uniform over [min, max).

    A bias (SimpleTuner's `generate_timestep_weights`) multiplies the weight of the biased
    timesteps: the last or first `portion` of the schedule (`later`, `earlier`), or
    begin..end (`range`, end excluded); the rest keep weight 1. Timesteps outside
    [min, max) get weight 0 (kohya's min/max_timestep)."""
    import torch

    high = num_timesteps if max_timestep is None else max_timestep
    if bias is None:
        return None
    weights = torch.ones(num_timesteps, dtype=torch.float64)
    count = int(bias.portion * num_timesteps)
    chosen = {
        "later": slice(num_timesteps - count, None) if count else slice(0, 0),
        "earlier": slice(0, count),
        "range": slice(bias.begin, bias.end),
    }[bias.strategy]
    weights[chosen] *= bias.multiplier
    weights[:min_timestep] = 0.0
    weights[high:] = 0.0
    return weights / weights.sum()


def draw_timesteps(batch: int, num_timesteps: int, generator, device, options=None):
    """Uniform integer timesteps in [min, max) (default [0, num_timesteps)), or drawn with
    `timestep_weights` when the recipe biases them."""
    import torch

    options = options or StepOptions()
    high = num_timesteps if options.max_timestep is None else options.max_timestep
    weights = timestep_weights(num_timesteps, options.min_timestep, high, options.timestep_bias)
    where = generator.device
    if weights is None:
        drawn = torch.randint(
            options.min_timestep, high, (batch,), generator=generator, device=where
        )
    else:
        weights = weights.to(where)
        drawn = torch.multinomial(weights, batch, replacement=True, generator=generator)
    return to_device(drawn, device)


def schedule_overrides(prediction: str, zero_terminal_snr: bool) -> dict:
    """Scheduler config changes for the base model's prediction type and zero-terminal-SNR.

    Zero-terminal-SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed") rescales the betas so the last timestep is pure noise (diffusers'
    `rescale_zero_terminal_snr`), and samples from that last timestep (`trailing` spacing).
    Training and sampling schedulers both take these, so they agree with each other."""
    out: dict = {}
    if prediction == "v":
        out["prediction_type"] = "v_prediction"
    if zero_terminal_snr:
        out.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return out


def training_scheduler(config, prediction: str = "epsilon", zero_terminal_snr: bool = False):
    """The DDPM training schedule of a base model's scheduler config (SDXL ships an Euler
    config; its betas and timestep count are what training needs), with `schedule_overrides`."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config, **schedule_overrides(prediction, zero_terminal_snr))


def target_for(scheduler, latents, noise, timesteps, prediction: str):
    """What the UNet must predict: the noise (epsilon) or the velocity (v-prediction),
    v = sqrt(alpha_bar_t) * noise - sqrt(1 - alpha_bar_t) * latents (Salimans & Ho 2022)."""
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
    if prediction == "v":
        return clipped / (s + 1.0)
    # Zero-terminal-SNR makes the last step's SNR 0; min(s, gamma) / s tends to 1 there.
    return torch.where(s > 0, clipped / s.clamp(min=torch.finfo(s.dtype).tiny), 1.0)


def huber_thresholds(scheduler, timesteps, schedule: str, huber_c: float):
    """The pseudo-Huber threshold c_t per sample (kohya's `get_huber_threshold`, which
    SimpleTuner copies): `constant` c; `exponential` c**(t / T), from 1 at t = 0 down to c at
    t = T; `snr` (1 - c) / (1 + sigma_t)**2 + c with sigma_t = sqrt((1 - abar_t) / abar_t),
    near 1 for clean timesteps and c for noisy ones."""
    import torch

    t = timesteps.float()
    if schedule == "constant":
        return torch.full_like(t, huber_c)
    if schedule == "exponential":
        return huber_c ** (t / scheduler.config.num_train_timesteps)
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    sigmas = ((1.0 - alphas) / alphas) ** 0.5
    return (1.0 - huber_c) / (1.0 + sigmas) ** 2 + huber_c


def elementwise_loss(pred, target, kind: str = "l2", thresholds=None):
    """The loss per element: l2 (p - y)**2; `huber` 2c(sqrt((p - y)**2 + c**2) - c) and
    `smooth_l1` 2(sqrt((p - y)**2 + c**2) - c) with `thresholds` c per sample (kohya's
    `conditional_loss`: pseudo-Huber, quadratic near 0 and linear far from it)."""
    import torch

    squared = (pred.float() - target.float()) ** 2
    if kind == "l2":
        return squared
    c = thresholds.float().view(-1, *([1] * (squared.dim() - 1)))
    robust = 2.0 * (torch.sqrt(squared + c**2) - c)
    return c * robust if kind == "huber" else robust


def debiased_weights(scheduler, timesteps, prediction: str):
    """Debiased estimation loss weights (Yu et al. 2024; kohya's `apply_debiased_estimation`):
    1 / sqrt(SNR) for epsilon, 1 / (SNR + 1) for v-prediction, with SNR capped at 1000."""
    s = snr(scheduler, timesteps).clamp(max=1000.0)
    return 1.0 / (s + 1.0) if prediction == "v" else 1.0 / s.sqrt()


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
    options: StepOptions | None = None,
):
    """Per-sample loss (B,) of the UNet's prediction (MSE unless `options.loss` says otherwise),
    and the timesteps used.

    `cond` holds `embeds`, `pooled`, `time_ids`. `timesteps` may be fixed (evaluation).
    `options` (StepOptions) carries the recipe's noise, timestep and loss settings; without it
    `prediction` and `noise_offset` give a plain step. Input-perturbation noise is added to
    what the UNet sees, never to its target.
    `channels_last`: hand the UNet NHWC latents (faster convolutions on CUDA tensor cores;
    the UNet's weights must be channels_last too, see Trainer._speed_up).
    `dtype`: the UNet's weight dtype if the caller knows it. diffusers' `unet.dtype` walks
    every submodule (get_parameter_dtype): with peft layers that was a fifth of a tiny
    model's step, so it is read at most once per call here.
    """
    import torch

    options = options or StepOptions(prediction=prediction, noise_offset=noise_offset)
    noise = draw_noise(latents, generator, options=options)
    if timesteps is None:
        timesteps = draw_timesteps(
            latents.shape[0],
            scheduler.config.num_train_timesteps,
            generator,
            latents.device,
            options,
        )
    model_noise = noise
    if options.ip_noise_gamma:
        extra = torch.randn(
            latents.shape, generator=generator, dtype=torch.float32, device=generator.device
        )
        model_noise = noise + options.ip_noise_gamma * to_device(extra, latents.device)
    dtype = unet.dtype if dtype is None else dtype
    noisy = scheduler.add_noise(latents, model_noise, timesteps).to(dtype)
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
    target = target_for(scheduler, latents, noise, timesteps, options.prediction)
    thresholds = None
    if options.loss != "l2":
        thresholds = huber_thresholds(scheduler, timesteps, options.huber_schedule, options.huber_c)
    per_sample = elementwise_loss(pred, target, options.loss, thresholds).mean(dim=(1, 2, 3))
    return per_sample, timesteps


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes (`torch.compile` docs). "reduce-overhead" and "max-autotune" record
each input shape as a CUDA graph (cudagraph trees) and replay it: one launch per step instead
of thousands of kernel launches; they keep a static copy of each shape's inputs and outputs."""

CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


COMPILE_SCOPES = ("blocks", "unet")
"""What `--compile` compiles. `blocks` (the default): each of the UNet's repeated transformer
blocks, diffusers' regional compilation (`compile_repeated_blocks`). The blocks of one width
share one compiled graph, so SDXL compiles a few graphs instead of one huge one. `unet`: the
whole UNet as one graph: faster steps on a small model, and a much longer first step
(docs/performance.md, "Compile")."""

GRAD_MODES = 2
"""Each input shape compiles with gradients (training) and without (sampling)."""
BLOCK_WIDTHS = 4
"""The widths one block's compiled code may meet: SDXL's blocks have two (640 and 1280
channels); room for derivatives. With GRAD_MODES it sets the recompile limit, so that no block
silently falls back to eager."""


def compile_unet(unet, buckets: int, mode: str = "default", scope: str = "blocks") -> bool:
    """`torch.compile` the UNet, or each of its repeated blocks, in place (`Module.compile`:
    parameter names, hence the adapter's state dict and export, stay the same).
    `dynamic=False` specialises one graph per input shape: each bucket shape (and sampling's
    batch) compiles once, on its first step; the recompile limit is raised so that no bucket
    falls back to eager. Returns whether the mode uses CUDA graphs (the loop then marks each
    step's start, and the trainer's own captured step stands aside)."""
    import torch

    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; use one of {COMPILE_MODES}")
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"unknown compile scope {scope!r}; use one of {COMPILE_SCOPES}")
    shapes = buckets + 2  # the training buckets, plus sampling's batch with and without CFG
    per_code = shapes * GRAD_MODES * (BLOCK_WIDTHS if scope == "blocks" else 1)
    _raise_recompile_limits(torch._dynamo.config, per_code)
    options = {"dynamic": False} | ({} if mode == "default" else {"mode": mode})
    if scope == "blocks":
        unet.compile_repeated_blocks(**options)
    else:
        unet.compile(**options)
    return mode in CUDA_GRAPH_MODES


def compile_blocker(device_type: str) -> str | None:
    """Why torch.compile cannot compile for this device here (None: it can). Inductor writes
    C++ for the CPU and Triton for CUDA; without their compilers the first step would fail
    after the tracing, so `train` checks first (T585) and runs uncompiled."""
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return (
                "inductor writes Triton kernels for a GPU, and Triton is not installed "
                "(pip install triton)"
            )
        return None
    from torch._inductor import config, cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler: none of the names in config.cpp.cxx works
        tried = ", ".join(str(name) for name in config.cpp.cxx if name)
        return (
            f"inductor writes C++ for the CPU and found no working C++ compiler (it tried "
            f"{tried}); install one, or set CXX to one"
        )
    return None


def compile_failure(err: BaseException, step: int, saved_step: int | None):
    """T586 for an error torch.compile raised while compiling (dynamo or inductor), else None.
    A bucket shape compiles on its first step, so this can come late in a run."""
    from torch._dynamo.exc import TorchDynamoException

    if not isinstance(err, TorchDynamoException):
        return None
    inner = getattr(err, "inner_exception", None) or err
    resume = f" from the step-{saved_step} checkpoint" if saved_step else ""
    return fail(
        "T586",
        f"torch.compile failed at step {step}: {error_summary(inner)}",
        f"run the same command without --compile (add --resume to go on{resume}), "
        "or try the other --compile-scope",
    )


def _raise_recompile_limits(config, per_code: int) -> None:
    """Raise dynamo's recompile limits (per code object, and over all of them) to at least
    `per_code` variants; the names changed in torch 2.6 (`cache_size_limit` before)."""
    for new, old, needed in (
        ("recompile_limit", "cache_size_limit", per_code),
        ("accumulated_recompile_limit", "accumulated_cache_size_limit", 4 * per_code),
    ):
        name = new if hasattr(config, new) else old
        setattr(config, name, max(getattr(config, name), needed))
