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


def make_scheduler(name: str, base_config):
    """The diffusers scheduler for a recipe sampler name; a missing package is T575."""
    import importlib.util

    import diffusers

    package = NEEDS.get(name)
    if package and importlib.util.find_spec(package) is None:
        from lorafile.compiler.diagnostics import DiagnosticBag

        bag = DiagnosticBag()
        bag.error(
            "T575",
            f"The sampler `{name}` needs the package `{package}`, which is not installed.",
            f"install it with `pip install {package}`, or choose `sampler euler_a`",
        )
        bag.raise_if_errors()
    cls_name, options = SAMPLERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **options)


def sample_images(components, sample: dict, folder: Path, device, autocast=None) -> list[Path]:
    """Generate one PNG per prompt with a fixed seed into `folder`, plus `grid.png`.

    `components` is the SDXLComponents whose UNet (and text encoders) carry the adapter;
    `autocast` (a context-manager factory) runs it under the training's mixed precision, which
    also lets the fp32 VAE decode half-precision latents.
    """
    import contextlib

    import torch
    from diffusers import StableDiffusionXLPipeline

    scheduler = make_scheduler(sample["sampler"], components.scheduler.config)
    pipe = StableDiffusionXLPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer,
        tokenizer_2=components.tokenizer_2,
        unet=components.unet,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
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


def decode(vae, processor, latents):
    """Latents to a PIL image with the VAE in its own (fp32) precision, outside autocast: the
    pipeline's own decode fails when the UNet ran in half precision and the VAE did not."""
    import torch

    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    return processor.postprocess(pixels, output_type="pil")[0]


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
