"""Preview images during training: the recipe's prompts, sampler and seed, PNGs plus a grid.

Sampler names are the recipe's (kohya's `--sample_sampler` spellings); each maps to the diffusers
scheduler class and options that implement it. The schedulers are built from the base model's
scheduler config so betas and timestep spacing match what the model was trained with.
"""

from __future__ import annotations

from pathlib import Path

SAMPLERS = {
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),  # needs scipy
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    # DPMSolverSDEScheduler needs torchsde; the SDE variant of DPM-Solver++ is the same method.
    "dpmpp_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


NEEDS = {"lms": "scipy"}
"""Samplers whose diffusers scheduler imports an optional package when it steps."""


def preview_pipeline(components, sampler: str, schedule: dict):
    """An SDXL pipeline over the loaded components (no copy) with the recipe's sampler and the
    base model's schedule settings (`schedule`: v-prediction, zero-terminal-SNR); shared by the
    training samples and `lorafile eval`, so both draw the same way."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer,
        tokenizer_2=components.tokenizer_2,
        unet=components.unet,
        scheduler=make_scheduler(sampler, components.scheduler.config, **schedule),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_scheduler(name: str, base_config, **overrides):
    """The diffusers scheduler for a recipe sampler name; a missing package is T575.
    `overrides`: config changes (diffusion.schedule_overrides: v-prediction, zero-terminal-SNR)."""
    import importlib.util

    import diffusers

    package = NEEDS.get(name)
    if package and importlib.util.find_spec(package) is None:
        from lorafile.runtime.environment import choice_needs_package

        raise choice_needs_package("T575", "sampler", name, package, "euler_a")
    cls_name, options = SAMPLERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **options, **overrides)


def sample_images(components, sample: dict, folder: Path, device, autocast=None) -> list[Path]:
    """Generate one PNG per prompt with a fixed seed into `folder`, plus `grid.png`.

    `components` is the SDXLComponents whose UNet (and text encoders) carry the adapter;
    `autocast` (a context-manager factory) runs it under the training's mixed precision, which
    also lets the fp32 VAE decode half-precision latents.
    """
    import contextlib

    import torch

    pipe = preview_pipeline(components, sample["sampler"], sample.get("schedule", {}))
    folder.mkdir(parents=True, exist_ok=True)
    width, height = sample["size"]
    paths = []
    for i, prompt in enumerate(sample["prompts"]):
        # A fresh generator per prompt: every checkpoint's image i starts from the same noise.
        generator = torch.Generator("cpu").manual_seed(sample["seed"] + i)
        with torch.no_grad(), (autocast or contextlib.nullcontext)():
            latents = pipe(
                prompt,
                negative_prompt=sample["negative"] or None,
                num_inference_steps=sample["steps"],
                guidance_scale=sample["cfg"],
                # Zero-terminal-SNR models over-expose with plain CFG (Lin et al. 2024, 3.4).
                guidance_rescale=sample.get("guidance_rescale", 0.0),
                width=width,
                height=height,
                generator=generator,
                output_type="latent",
            ).images
        image = decode(components.vae, pipe.image_processor, latents)
        path = folder / f"{i:02d}.png"
        image.save(path)
        paths.append(path)
    make_grid(paths, folder / "grid.png")
    return paths


TILE_PIXELS = 512
"""Tile size of a decode that does not fit whole (pixels; overlapping tiles are blended)."""
DECODE_BYTES_PER_ELEMENT = 3
"""The VAE decoder holds about three 256-channel full-resolution tensors at its peak (traced on
the meta device: 3.00 GiB in fp32 at 1024², compiler/vram.py `vae_decode_elements`)."""


def decode(vae, processor, latents):
    """Latents to a PIL image with the VAE in its own (fp32) precision, outside autocast: the
    pipeline's own decode fails when the UNet ran in half precision and the VAE did not.

    Decoded whole when the GPU has room, else in TILE_PIXELS tiles (as ComfyUI's VAE decode
    falls back to tiles): an fp32 decode at 1024² needs 3.0 GiB on top of the training state,
    512-pixel tiles 0.76 GiB, which is what keeps sampling inside a 12 GB card."""
    import torch

    tiled = needs_tiles(vae, latents)
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    if tiled:
        vae.use_tiling = True
        vae.tile_sample_min_size = TILE_PIXELS
        vae.tile_latent_min_size = TILE_PIXELS // downscale(vae)
    try:
        with torch.no_grad():
            scaled = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor
            pixels = vae.decode(scaled).sample
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved
    return processor.postprocess(pixels, output_type="pil")[0]


def downscale(vae) -> int:
    """Pixels per latent (8 for SDXL's VAE): each encoder block but the last halves the size."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def needs_tiles(vae, latents) -> bool:
    """True on a GPU whose free memory (the driver's plus the allocator's cached blocks) is
    short of a whole decode with a 20% margin. Never on a CPU: host memory is not the limit."""
    import torch

    device, factor = next(vae.parameters()).device, downscale(vae)
    if device.type != "cuda" or max(latents.shape[-2:]) * factor <= TILE_PIXELS:
        return False
    pixels = latents.shape[0] * latents.shape[-2] * latents.shape[-1] * factor**2
    need = DECODE_BYTES_PER_ELEMENT * 256 * pixels * next(vae.parameters()).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return need * 1.2 > free


def make_grid(paths: list[Path], out: Path, columns: int | None = None) -> Path:
    """Tile images left to right, top to bottom (at most 4 per row by default)."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths]
    columns = columns or min(4, len(images))
    rows = -(-len(images) // columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for k, image in enumerate(images):
        grid.paste(image, ((k % columns) * w, (k // columns) * h))
    grid.save(out)
    return out
