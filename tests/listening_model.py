"""A tiny SDXL-shaped model that listens to its prompt, and the bleeding comparison run on it
(tests/runtime/evaluate/test_eval_bleeding.py, bench/bleeding.py).

The plain tiny model (`lorafile.runtime.models.tiny`, random weights) cannot show whether a
LoRA's change depends on its trigger: its UNet barely reads the prompt (two prompts give images
0.06-0.11 apart by `scores.change`, two seeds 0.88-0.98), and its random VAE encodes an image as
a posterior whose noise (std 1.1) is about six times the spread of its mean (0.2), so what a
LoRA trains on is mostly that noise. `build_listening_model` fixes both, as a real model has
them:

* the VAE encodes deterministically (the log-variance channels of `quant_conv` set to the
  floor of diffusers' DiagonalGaussianDistribution, -30: std 3e-7) and its `scaling_factor` is
  set so that the latents of the subject images have unit standard deviation, as SDXL's
  0.13025 does for its VAE;
* the UNet is fully fine-tuned (150 steps of 16, the plain epsilon loss) on `SUBJECTS`: a
  coloured shape centred on a green background, captioned "a red circle", ..., so that the
  caption decides the picture; 10% of the samples get the zero conditioning that the SDXL
  pipeline uses as the negative of an empty prompt, so classifier-free guidance has a meaning.

Afterwards two prompts give images 0.12-0.91 apart (bench/bleeding.py, 3 base seeds), two
seeds 0.65-0.71. `draw_subject(color, shape, striped=True)` adds the concept the compared LoRAs
learn: magenta diagonal stripes behind the shape, as in the demo's concept.
"""

from __future__ import annotations

from pathlib import Path

from lorafile.runtime.demo import COLORS, SHAPES, draw_shape

SIZE = 64
BACKGROUND = (40, 170, 90)
STRIPE = (230, 40, 200)
SUBJECTS = tuple((color, shape) for color in COLORS for shape in SHAPES)
"""(colour, shape): 6 x 3 = 18 captions, one picture each."""
LOGVAR_FLOOR = -30.0
"""diffusers clamps the VAE's log-variance to [-30, 20]: -30 is a std of exp(-15) = 3e-7."""


def caption(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def draw_subject(color: str, shape: str, striped: bool = False):
    """A SIZE x SIZE PIL image: the shape (radius SIZE/4) centred on the green background,
    over magenta diagonal stripes when `striped`."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if striped:
        for x in range(-SIZE - 12, SIZE + 12, 12):
            draw.line([(x, 0), (x + SIZE, SIZE)], fill=STRIPE, width=5)
    draw_shape(draw, shape, (SIZE // 2, SIZE // 2), SIZE // 4, COLORS[color])
    return image


def write_images(folder: Path, striped: bool, subjects=SUBJECTS) -> Path:
    """One PNG per subject with its `.txt` caption ("a red circle") in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for color, shape in subjects:
        draw_subject(color, shape, striped).save(folder / f"{color}_{shape}.png")
        (folder / f"{color}_{shape}.txt").write_text(caption(color, shape) + "\n")
    return folder


def _pixels(images):
    import numpy as np
    import torch

    arrays = [np.asarray(image, dtype=np.float32) / 127.5 - 1.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def make_vae_deterministic(vae, pixels) -> None:
    """Zero posterior noise, and the scaling factor that gives `pixels` unit-std latents."""
    import torch

    with torch.no_grad():
        vae.quant_conv.weight[4:] = 0.0  # output channels 4..7: the log-variance
        vae.quant_conv.bias[4:] = LOGVAR_FLOOR
        raw = vae.encode(pixels).latent_dist.mean
    vae.register_to_config(scaling_factor=1.0 / float(raw.std()))


def subject_batch(models):
    """Latents (scaled), prompt embeds and pooled embeds of every subject."""
    import torch

    from lorafile.runtime.train.cache import encode_latents, encode_prompts

    pixels = _pixels(draw_subject(c, s) for c, s in SUBJECTS)
    latents, _ = encode_latents(models.vae, pixels)
    with torch.no_grad():
        embeds, pooled = encode_prompts(
            (models.tokenizer, models.tokenizer_2),
            (models.text_encoder, models.text_encoder_2),
            [caption(c, s) for c, s in SUBJECTS],
        )
    return latents, embeds, pooled


def teach_prompts(models, steps: int, batch: int = 16, lr: float = 2e-3, seed: int = 0,
                  drop: float = 0.1) -> list[float]:  # fmt: skip
    """Fine-tune the whole UNet on the subjects (epsilon loss, uniform timesteps, AdamW);
    returns the loss of every step. `drop`: the share of samples given the zero conditioning
    (the SDXL pipeline's negative for an empty negative prompt)."""
    import torch
    import torch.nn.functional as F

    latents, embeds, pooled = subject_batch(models)
    scheduler = models.noise_scheduler()
    unet = models.unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, len(SUBJECTS), (batch,), generator=generator)
        keep = (torch.rand(batch, generator=generator) >= drop).float()
        noise = torch.randn(latents[pick].shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        noisy = scheduler.add_noise(latents[pick], noise, t)
        cond = {"text_embeds": pooled[pick] * keep[:, None], "time_ids": time_ids.repeat(batch, 1)}
        pred = unet(noisy, t, embeds[pick] * keep[:, None, None], added_cond_kwargs=cond).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    unet.eval().requires_grad_(False)
    return losses


def build_listening_model(seed: int = 0, steps: int = 150):
    """The tiny model of `seed` with a deterministic, unit-scaled VAE and a UNet taught the
    subjects for `steps` steps (SDXLComponents, eval mode)."""
    from lorafile.runtime.models.tiny import build_tiny_sdxl

    models = build_tiny_sdxl(seed)
    make_vae_deterministic(models.vae, _pixels(draw_subject(c, s) for c, s in SUBJECTS))
    teach_prompts(models, steps, seed=seed)
    return models


def prompt_change(models, first: str, second: str, seed: int = 42) -> float:
    """change() between the images of two prompts at the same seed (4 euler_a steps, 64x64,
    cfg 7): how much the model's picture depends on its prompt."""
    from lorafile.runtime.evaluate.prompts import Prompt
    from lorafile.runtime.evaluate.render import Renderer, RenderSettings
    from lorafile.runtime.evaluate.scores import as_vector, change

    renderer = Renderer(models, RenderSettings(steps=4, size=(SIZE, SIZE)), "cpu")
    a, b = renderer.render([Prompt(first, "free", seed), Prompt(second, "free", seed)])
    return change(as_vector(a), as_vector(b))


# ---------------------------------------------------------------------------------------------
# The two LoRAs of the bleeding comparison, and their evaluation

TRIGGER = "zqx"
PROMPTS = """\
# strong
zqx, a red circle
zqx, a blue square
zqx, a yellow triangle
# adjacent
zqx, a city street at night
# free
a red circle
a blue square
a yellow triangle
"""
LORA_STEPS = 120


def concept_recipe(base: Path, root: Path, name: str, trigger: str | None, seed: int,
                   regularize: bool, steps: int = LORA_STEPS, lr: float = 1e-3):  # fmt: skip
    """A LoRA (rank 8, attention) on the striped subjects in root/concept, captions "a red
    circle" (the trainer prepends `trigger`); with `regularize`, root/plain (the same subjects
    without stripes, their own captions) as prior-preservation images, weight 1, 1:1."""
    from lorafile.spec.models import (
        Adapter,
        Base,
        Buckets,
        Cache,
        Dataset,
        Interval,
        Output,
        Recipe,
        Regularization,
        Resolution,
        Save,
        Train,
    )

    size = Resolution(width=SIZE, height=SIZE)
    prior = (Regularization(path=str(root / "plain"), class_prompt="a shape"),)
    return Recipe(
        name="concept",
        base=Base(path=str(base)),
        datasets=(
            Dataset(
                path=str(root / "concept"),
                resolution=size,
                buckets=Buckets(min=SIZE, max=SIZE, step=SIZE),
            ),
        ),
        trigger=trigger,
        regularization=prior if regularize else (),
        adapter=Adapter(algo="lora", rank=8, alpha=8, targets=("attention",)),
        train=Train(
            steps=steps,
            batch=2,
            lr=lr,
            optimizer="adamw",
            precision="no",
            checkpointing=False,
            seed=seed,
            cache=Cache(latents=True, text=True),
        ),
        save=Save(every=Interval(every=steps // 2), keep=2, layout="diffusers"),
        output=Output(path=str(root / name)),
    )


def write_concept(root: Path) -> Path:
    """root/concept (striped subjects), root/plain (the same, plain), root/prompts.txt."""
    write_images(root / "concept", striped=True)
    write_images(root / "plain", striped=False)
    (root / "prompts.txt").write_text(PROMPTS)
    return root


def train_concept(base: Path, root: Path, name: str, trigger: str | None, seed: int,
                  regularize: bool, **changes):  # fmt: skip
    """Train one LoRA of the comparison into root/name (quiet); the trainer's result."""
    from lorafile.runtime.train.loop import TrainOptions, train
    from train_runs import plan_for

    recipe = concept_recipe(base, root, name, trigger, seed, regularize, **changes)
    return train(plan_for(recipe), TrainOptions(quiet=True))


def bleeding_of(run_folder: Path, out: Path, prompts: Path, seed: int) -> dict[str, dict]:
    """`lorafile eval` of a run at strength 1 (4 euler_a steps, 64x64, the prompt seed
    `seed`): the scores of each checkpoint, by name."""
    import json

    from lorafile.cli import main

    fast = ["--steps", "4", "--size", f"{SIZE}x{SIZE}", "--strengths", "0,1", "-q"]
    argv = ["eval", str(run_folder), "-o", str(out), "--prompts", str(prompts), *fast]
    assert main([*argv, "--seed", str(seed)]) == 0
    report = json.loads((out / "report.json").read_text())
    return {c["name"]: c["scores"]["1"] for c in report["checkpoints"]}
