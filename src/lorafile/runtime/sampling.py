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


def make_scheduler(name: str, base_config):
    import diffusers

    cls_name, options = SAMPLERS[name]
    cls = getattr(diffusers, cls_name)
    try:
        return cls.from_config(base_config, **options)
    except ImportError as err:
        raise RuntimeError(f"The sampler `{name}` needs a package that is missing: {err}") from err


def sample_images(components, sample: dict, folder: Path, device) -> list[Path]:
    """Generate one PNG per prompt with a fixed seed into `folder`, plus `grid.png`.

    `components` is the SDXLComponents whose UNet (and text encoders) carry the adapter.
    """
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
        with torch.no_grad():
            image = pipe(
                prompt,
                negative_prompt=sample["negative"] or None,
                num_inference_steps=sample["steps"],
                guidance_scale=sample["cfg"],
                width=width,
                height=height,
                generator=generator,
            ).images[0]
        path = folder / f"{i:02d}.png"
        image.save(path)
        paths.append(path)
    make_grid(paths, folder / "grid.png")
    return paths


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
