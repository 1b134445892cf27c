"""Bleeding of a LoRA trained with its trigger against one trained without, per seed.

Builds the text-listening tiny model of tests/listening_model.py (the tiny SDXL with a
deterministic VAE and a UNet taught "a red circle", ... for --teach steps), prints how much its
pictures depend on the prompt before and after teaching, then for every seed trains the two
LoRAs of the comparison on the striped subjects (`trigger`: captions "zqx, a red circle" with
the plain subjects as regularization images; `plain`: the captions alone) and prints the
bleeding, effect and free-prompt effect of each checkpoint from `lorafile eval`.

    PYTHONPATH=src .venv/bin/python bench/bleeding.py [--seeds 7,8,9] [--base-seeds 0]
        [--teach 150] [--steps 120] [--lr 1e-3] [--no-regularize]

The seed of a row is the LoRA training seed and the prompt seed of its evaluation; the base
seed draws the tiny model's weights and its teaching batches. CPU, one thread: about 20 s to
build a base and 20 s per seed on a free core. `--teach 0` keeps the deterministic VAE but
skips the teaching; `--no-regularize` trains the trigger run without its regularization images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the model builder is a test helper

import listening_model as lm  # noqa: E402

PAIRS = (
    ("a red circle", "a blue square"),
    ("a red circle", "zqx, a red circle"),
    ("a yellow triangle", "a black circle"),
)


def sensitivity(models) -> str:
    """change() between the prompts of each pair at one seed, and between two seeds."""
    from lorafile.runtime.evaluate.prompts import Prompt
    from lorafile.runtime.evaluate.render import Renderer, RenderSettings
    from lorafile.runtime.evaluate.scores import as_vector, change

    parts = [f"{lm.prompt_change(models, a, b):.3f}" for a, b in PAIRS]
    renderer = Renderer(models, RenderSettings(steps=4, size=(lm.SIZE, lm.SIZE)), "cpu")
    one, two = renderer.render(
        [Prompt("a red circle", "free", 42), Prompt("a red circle", "free", 43)]
    )
    return (
        "prompt pairs " + " ".join(parts) + f" | seed {change(as_vector(one), as_vector(two)):.3f}"
    )


def build_base(seed: int, teach: int, path: Path) -> Path:
    from lorafile.runtime.models.tiny import build_tiny_sdxl, save_tiny_sdxl

    models = build_tiny_sdxl(seed)
    print(f"base {seed} plain tiny model:       {sensitivity(models)}", flush=True)
    models = lm.build_listening_model(seed, steps=0)
    print(f"base {seed} deterministic VAE:      {sensitivity(models)}", flush=True)
    start = time.perf_counter()
    losses = lm.teach_prompts(models, teach, seed=seed)
    took = time.perf_counter() - start
    tail = sum(losses[-20:]) / max(len(losses[-20:]), 1)
    print(
        f"base {seed} taught {teach} steps ({took:.0f} s, loss {tail:.3f}): {sensitivity(models)}"
    )
    save_tiny_sdxl(path, as_single_file=True, model=models)
    return path


def compare(base: Path, root: Path, seed: int, args) -> None:
    prompts = root / "prompts.txt"
    runs = (("trigger", lm.TRIGGER, args.regularize), ("plain", None, False))
    for name, trigger, regularize in runs:
        start = time.perf_counter()
        folder = root / f"{name}-{seed}"
        lm.train_concept(
            base, root, folder.name, trigger, seed, regularize, steps=args.steps, lr=args.lr
        )
        scores = lm.bleeding_of(folder, root / f"E-{name}-{seed}", prompts, seed)
        took = time.perf_counter() - start
        cells = "  ".join(
            f"{k}: bleeding {s['bleeding']:.3f} effect {s['effect']:.3f} free {s['free_effect']:.3f}"
            for k, s in scores.items()
        )
        print(f"  seed {seed} {name:7s} ({took:4.1f} s)  {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="7,8,9")
    parser.add_argument("--base-seeds", default="0")
    parser.add_argument("--teach", type=int, default=150)
    parser.add_argument("--steps", type=int, default=lm.LORA_STEPS)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-regularize", dest="regularize", action="store_false")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for base_seed in [int(s) for s in args.base_seeds.split(",")]:
            root = lm.write_concept(Path(tmp) / f"base{base_seed}")
            base = build_base(base_seed, args.teach, root / "base.safetensors")
            for seed in [int(s) for s in args.seeds.split(",")]:
                compare(base, root, seed, args)


if __name__ == "__main__":
    main()
