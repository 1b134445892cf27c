"""A tiny training run for the CPU benchmarks and the DDP tests: a synthetic dataset and a
recipe for the tiny SDXL-shaped model (`lorafile.runtime.models.tiny`). No download.

Import it from a script in bench/ or from tests (tests put bench/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path


def make_dataset(folder: Path, count: int = 4, size: int = 64, trigger: str = "zkq") -> Path:
    """`count` PNG images of `size` px (smooth colour fields, one hue each) with captions."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for i in range(count):
        hue = np.array([(i * 0.37) % 1.0, (i * 0.61) % 1.0, (i * 0.13) % 1.0], dtype=np.float32)
        pixels = (grid[None, :, None] * hue + grid[:, None, None] * (1 - hue)) * 255
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"{trigger} colour field number {i}\n")
    return folder


def tiny_recipe(model: Path, data: Path, out: Path, **train):
    """A Recipe for the tiny model; `train` overrides Train fields (steps, batch, ...)."""
    from lorafile.spec.models import (
        Adapter,
        Base,
        Buckets,
        Cache,
        Dataset,
        Output,
        Recipe,
        Resolution,
        Save,
        Train,
    )

    settings = {
        "steps": 4,
        "batch": 1,
        "lr": 1e-3,
        "optimizer": "adamw",
        "precision": "no",
        "checkpointing": False,
        "cache": Cache(latents=True, text=True),
        "seed": 7,
        **train,
    }
    return Recipe(
        name="tiny",
        base=Base(path=str(model)),
        datasets=(
            Dataset(
                path=str(data),
                resolution=Resolution(width=64, height=64),
                buckets=Buckets(enabled=False),
            ),
        ),
        adapter=Adapter(rank=4),
        train=Train(**settings),
        save=Save(precision="fp32"),
        output=Output(path=str(out)),
    )


def tiny_plan(recipe, base_dir: Path) -> dict:
    from lorafile.compiler.diagnostics import DiagnosticBag
    from lorafile.runtime.train.plan import build_plan

    bag = DiagnosticBag()
    plan = build_plan(recipe, bag, base_dir=base_dir)
    bag.raise_if_errors()
    plan["base_dir"] = str(base_dir)
    return plan


def save_tiny_model(path: Path) -> Path:
    from lorafile.runtime.models.tiny import save_tiny_sdxl

    return save_tiny_sdxl(path, as_single_file=True, seed=0)
