"""The demo's synthetic concept and the learning check.

The concept behind the trigger word is a texture: simple coloured shapes drawn over magenta and
green diagonal stripes. Captions name only the shape and its colour ("a red circle"), so the
stripes are what the trigger has to learn. `heldout_loss` measures that: the denoising loss on
images the run never saw, with fixed noise and timesteps, with and without the adapter.
"""

from __future__ import annotations

import random
from pathlib import Path

COLORS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ((96, 96), (96, 96), (128, 64), (64, 128))
EVAL_TIMESTEPS = (100, 250, 400, 550, 700, 850)


def draw_concept(size: tuple[int, int], color: str, shape: str, rng: random.Random):
    """One image of the concept: stripes (the thing to learn) plus a captioned shape."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", size, (40, 170, 90))
    draw = ImageDraw.Draw(image)
    offset = rng.randrange(12)
    for x in range(-h - 12 + offset, w + 12, 12):
        draw.line([(x, 0), (x + h, h)], fill=(230, 40, 200), width=5)
    r = min(w, h) // 4
    cx, cy = rng.randrange(r + 4, w - r - 4), rng.randrange(r + 4, h - r - 4)
    draw_shape(draw, shape, (cx, cy), r, COLORS[color])
    return image


def draw_shape(draw, shape: str, centre: tuple[int, int], r: int, fill) -> None:
    """A circle, square or triangle of half-size `r` at `centre` on a PIL ImageDraw."""
    cx, cy = centre
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def make_dataset(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` images with `.txt` captions ("a red circle") in `folder`; deterministic."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        color, shape = rng.choice(list(COLORS)), SHAPES[i % len(SHAPES)]
        image = draw_concept(SIZES[i % len(SIZES)], color, shape, rng)
        path = folder / f"{i:03d}_{color}_{shape}.png"
        image.save(path)
        path.with_suffix(".txt").write_text(f"a {color} {shape}\n")
        paths.append(path)
    return paths


def heldout_loss(models, folder: Path, trigger: str, seed: int = 1234) -> float:
    """Mean denoising MSE over `folder`'s images with trigger captions, at EVAL_TIMESTEPS with
    noise drawn from `seed`: the same noise and timesteps for every model compared."""
    import torch

    from lorafile.runtime.train import data, diffusion
    from lorafile.runtime.train.cache import encode_latents, encode_prompts

    scheduler = models.noise_scheduler()
    losses = []
    for path in data.list_images(folder):
        w, h = data.read_size(path)
        caption = data.with_trigger(data.caption_for(path, "txt")[0], trigger)
        item = data.ImageItem(str(path), "", w, h, caption, (w // 32 * 32, h // 32 * 32), 0)
        pixels, ids = data.load_pixels(item)
        with torch.no_grad():
            mean, _ = encode_latents(models.vae, pixels[None])
            embeds, pooled = encode_prompts(
                (models.tokenizer, models.tokenizer_2),
                (models.text_encoder, models.text_encoder_2),
                [caption],
            )
            latents = mean.repeat(len(EVAL_TIMESTEPS), 1, 1, 1)
            n = len(EVAL_TIMESTEPS)
            cond = {
                "embeds": embeds.repeat(n, 1, 1),
                "pooled": pooled.repeat(n, 1),
                "time_ids": torch.tensor([ids] * n, dtype=torch.float32),
            }
            generator = torch.Generator().manual_seed(seed)
            per_sample, _ = diffusion.denoising_loss(
                models.unet,
                scheduler,
                latents,
                cond,
                generator,
                timesteps=torch.tensor(EVAL_TIMESTEPS),
            )
        losses.append(per_sample.mean().item())
    return sum(losses) / len(losses)
