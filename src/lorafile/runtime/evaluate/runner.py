"""`lorafile eval`, end to end: prompts, renders, scores, grids, loss curve, report.

For every selected checkpoint and strength the prompt set is rendered with fixed seeds; the
strength-0 column is the base model rendered once with no LoRA loaded (the strength switch
gives the same bits: tests/runtime/evaluate/test_eval_cli.py). Outputs, in OUT:

    index.html, report.json, loss.svg (when the run has TensorBoard events)
    grids/<checkpoint>.png       rows prompts, columns strengths
    grids/checkpoints.png        rows prompts, columns base + checkpoints, at strength 1
    images/base/NN.png, images/<checkpoint>/s<strength>/NN.png   every cell at full size
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lorafile.compiler.diagnostics import fail
from lorafile.files import file_in_the_way, real_path
from lorafile.runtime.evaluate import scores as S
from lorafile.runtime.evaluate.prompts import (
    PromptSet,
    default_groups,
    no_prompts_error,
    read_prompt_file,
    seeded,
)
from lorafile.runtime.evaluate.render import Renderer, RenderSettings
from lorafile.runtime.evaluate.target import Target, list_images, select_checkpoints

OUTPUTS = ("index.html", "report.json", "loss.svg", "grids", "images")
"""What eval writes: --force removes these and nothing else."""
DEFAULT_STRENGTHS = (0.0, 0.5, 0.75, 1.0)
DEFAULT_SEED = 42


@dataclass
class EvalOptions:
    out: Path
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    checkpoints: str = "all"
    prompts: Path | None = None
    trigger: str | None = None
    seed: int | None = None
    steps: int | None = None
    size: tuple[int, int] | None = None
    sampler: str | None = None
    cfg: float | None = None
    dataset: Path | None = None
    device: str | None = None
    batch: int | None = None
    force: bool = False
    quiet: bool = False


def prepare_out(out: Path, force: bool) -> None:
    """Refuse a non-empty folder (E906) unless --force; --force removes only eval's outputs."""
    blocker = file_in_the_way(out)  # the folder itself, or a part of its path
    if blocker is not None:
        raise fail("E906", f"`{blocker}` is a file, not a folder.", "choose another folder with -o")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise fail(
                "E906",
                f"The output folder `{out}` is not empty.",
                "pass --force to replace an earlier evaluation in it, or choose another folder",
            )
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def prompt_set(target: Target, options: EvalOptions, seed: int) -> PromptSet:
    if options.prompts is not None:
        return read_prompt_file(options.prompts, seed)
    trigger = options.trigger or target.trigger
    if not trigger and not target.subjects:
        raise no_prompts_error()
    prompts = seeded(default_groups(trigger, target.subjects), seed)
    if not prompts.prompts:
        raise no_prompts_error()
    return prompts


def render_settings(target: Target, options: EvalOptions, device) -> RenderSettings:
    """The run's sample settings (sampler, steps, cfg, size, negative) unless overridden."""
    sample = target.sample or {}
    size = options.size or tuple(sample.get("size", (1024, 1024)))
    batch = options.batch or (8 if getattr(device, "type", str(device)) == "cuda" else 1)
    return RenderSettings(
        sampler=options.sampler or sample.get("sampler", "euler_a"),
        steps=options.steps or sample.get("steps", 28),
        cfg=options.cfg if options.cfg is not None else sample.get("cfg", 7.0),
        size=(int(size[0]), int(size[1])),
        negative=sample.get("negative", ""),
        batch=batch,
        schedule=dict(sample.get("schedule", {})),
        guidance_rescale=sample.get("guidance_rescale", 0.0),
    )


def training_images(target: Target, options: EvalOptions) -> list[Path]:
    if options.dataset is not None:
        return list_images(options.dataset)
    return [p for p in target.training_images if p.is_file()]


def load_models(target: Target, device):
    """The base model on `device`: fp32 on a CPU; bf16 UNet and text encoders on a GPU (the
    VAE stays fp32: SDXL's VAE overflows in half precision), in eval mode."""
    import torch

    from lorafile.runtime.models.sdxl import load_sdxl

    models = load_sdxl(target.base)
    if target.vae is not None:
        models.vae = load_sdxl(target.vae, parts=("vae",)).vae
    half = torch.bfloat16 if device.type == "cuda" else torch.float32
    for module, dtype in (
        (models.vae, torch.float32),
        (models.unet, half),
        (models.text_encoder, half),
        (models.text_encoder_2, half),
    ):
        if module.dtype != dtype:
            module.to(dtype)
        module.to(device)
        module.eval()
    return models


def autocast_for(device):
    """bf16 autocast on a GPU (the LoRA weights stay fp32, like the trainer's samples)."""
    import contextlib
    import functools

    import torch

    if device.type != "cuda":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)


@dataclass
class Column:
    """One rendered column: a checkpoint at a strength (or the base), its images as files."""

    images: list
    paths: list[Path]


class Evaluation:
    """One `lorafile eval`: `run()` renders every column, scores it and writes the report."""

    def __init__(self, target: Target, options: EvalOptions):
        import torch

        self.target, self.options = target, options
        self.out = real_path(options.out)
        self.device = torch.device(
            options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.seed = options.seed if options.seed is not None else _sample_seed(target)
        self.prompts = prompt_set(target, options, self.seed)
        self.checkpoints = select_checkpoints(target.checkpoints, options.checkpoints)
        self.strengths = sorted({float(s) for s in options.strengths} | {0.0})
        self.settings = render_settings(target, options, self.device)
        self.groups = {g: self.prompts.of(g) for g in ("strong", "adjacent", "free")}
        self.training_count = 0
        """Training images memorisation compared with (set by `run`)."""

    @property
    def headline(self) -> float:
        """The strength the cross-checkpoint grid and the trade-off use: 1, else the highest."""
        return 1.0 if 1.0 in self.strengths else max(self.strengths)

    def run(self) -> Path:
        from lorafile.runtime.evaluate.report import write_report

        prepare_out(self.out, self.options.force)
        models = load_models(self.target, self.device)
        renderer = Renderer(models, self.settings, self.device, autocast_for(self.device))
        bar = self._progress()
        base = self._column(renderer, "base", bar)
        training = hash_images(training_images(self.target, self.options))
        self.training_count = len(training)
        results = [self._checkpoint(renderer, c, base, training, bar) for c in self.checkpoints]
        renderer.use(None)
        bar.close()
        return write_report(self, base, results)

    def _progress(self):
        from tqdm.auto import tqdm

        nonzero = [s for s in self.strengths if s != 0]
        total = len(self.prompts.prompts) * (1 + len(self.checkpoints) * len(nonzero))
        return tqdm(total=total, unit="image", disable=self.options.quiet, desc="eval")

    def _column(self, renderer: Renderer, folder: str, bar) -> Column:
        prompts = list(self.prompts.prompts)
        images = []
        for start in range(0, len(prompts), self.settings.batch):
            batch = renderer.render(prompts[start : start + self.settings.batch])
            images += batch
            bar.update(len(batch))
        paths = [
            save_image(im, self.out / "images" / folder / f"{i:02d}.png")
            for i, im in enumerate(images)
        ]
        return Column(images, paths)

    def _checkpoint(self, renderer, checkpoint, base: Column, training, bar) -> dict:
        """Every non-zero strength of one checkpoint, scored against the base column."""
        renderer.use(checkpoint.path)
        columns, scores = {}, {}
        base_vectors = [S.as_vector(im) for im in base.images]
        base_hashes = hash_pil(base.images) if training else None
        for strength in self.strengths:
            if strength == 0:
                columns[S.strength_key(strength)] = base
                continue
            renderer.set_strength(strength)
            folder = f"{checkpoint.name}/s{S.strength_key(strength)}"
            column = columns[S.strength_key(strength)] = self._column(renderer, folder, bar)
            hashes = (hash_pil(column.images), base_hashes, training) if training else None
            vectors = [S.as_vector(im) for im in column.images]
            scores[S.strength_key(strength)] = S.score_grid(
                self.groups, vectors, base_vectors, hashes
            )
        return {"checkpoint": checkpoint, "columns": columns, "scores": scores}


def _sample_seed(target: Target) -> int:
    """The run's sample seed (its samples and the grid's rows then share their noise)."""
    seed = (target.sample or {}).get("seed")
    return DEFAULT_SEED if seed is None else int(seed)


def save_image(image, path: Path) -> Path:
    from lorafile.files import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def hash_pil(images: list) -> list:
    """64-bit perceptual hashes (DCT of a 32x32 grayscale thumbnail) as bool arrays."""
    import imagehash

    return [imagehash.phash(im).hash.ravel() for im in images]


def hash_images(paths: list[Path]) -> list:
    from PIL import Image

    hashes = []
    for path in paths:
        with Image.open(path) as image:
            hashes += hash_pil([image.convert("RGB")])
    return hashes
