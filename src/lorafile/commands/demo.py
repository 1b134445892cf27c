"""`lorafile demo [-o DIR]`: the whole pipeline on a tiny model, on a CPU, with no download.

Builds a tiny SDXL-shaped model (a diffusers folder and a single file), a synthetic dataset
whose trigger word stands for a texture, writes a recipe, then checks, lints and compiles it for
every target, trains about a hundred steps with samples and TensorBoard logs, and measures
whether the adapter learned the concept (held-out denoising loss with and without it), then
evaluates the checkpoints with `lorafile eval` (grids, scores, report) and prints the report's path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lorafile.files import real_path

TRIGGER = "zqx"
RECIPE = """\
# The lorafile demo: a tiny SDXL-shaped model learns what "{trigger}" means
# (magenta and green diagonal stripes behind a shape). Paths are absolute so the compiled
# kohya and SimpleTuner configs work from any folder.
recipe "demo"

base sdxl "{root}/model/tiny-sdxl.safetensors"

dataset "{root}/dataset/train" {{
    kind concept
    captions txt
    resolution 64
    buckets 64..128 step 64
}}

trigger "{trigger}"

adapter locon {{
    rank 8
    alpha 8
}}

train {{
    steps {steps}
    batch 2
    lr 1e-2 cosine warmup 10
    optimizer adamw
    precision no
    checkpointing off
    cache latents text disk
    seed 7
}}

save every 50 steps keep 2

sample every 50 steps {{
    sampler euler_a
    steps 8
    seed 42
    size 64x64
    prompt "{trigger}, a red circle"
    prompt "a red circle"
}}

hardware {{
    gpu "RTX 4070"
}}

output "{root}/train"

log tensorboard
"""


EVAL_PROMPTS = """\
# The demo's evaluation prompt set (docs/eval.md): a few rows keep it fast on a CPU.
# strong
{trigger}, a red circle
{trigger}, a blue square
# adjacent
{trigger}, a city street at night
# free
a red circle
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a tiny model and a synthetic dataset (CPU, no download)",
        description=(
            "Build a tiny SDXL-shaped model and a synthetic dataset with a trigger word, write a "
            "recipe, check, lint and compile it for kohya, SimpleTuner and the native trainer, "
            "train about 100 steps with samples and TensorBoard logs, evaluate the checkpoints "
            "(`lorafile eval`), and show where it all is."
        ),
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("lorafile-demo"),
        help="folder for everything (default: ./lorafile-demo)",
    )
    p.add_argument("--steps", type=int, default=100, help="training steps (default: 100)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo in the folder")
    p.set_defaults(func=run)


def _say(message: str) -> None:
    print(message, flush=True)


def build_inputs(root: Path, steps: int) -> Path:
    """The tiny model (both layouts), the datasets and the recipe; returns the recipe path."""
    from lorafile.runtime.demo import make_dataset
    from lorafile.runtime.models.tiny import build_tiny_sdxl, save_tiny_sdxl

    model = build_tiny_sdxl(seed=0)
    save_tiny_sdxl(root / "model" / "tiny-sdxl", model=model)
    save_tiny_sdxl(root / "model" / "tiny-sdxl.safetensors", as_single_file=True, model=model)
    _say(
        f"model:    {root / 'model'} (diffusers folder tiny-sdxl/ and single file tiny-sdxl.safetensors)"
    )
    make_dataset(root / "dataset" / "train", 12, seed=1)
    make_dataset(root / "dataset" / "heldout", 4, seed=99)
    _say(
        f"dataset:  {root / 'dataset' / 'train'} (12 images, captions .txt; held-out: dataset/heldout)"
    )
    recipe = root / "demo.recipe"
    recipe.write_text(RECIPE.format(root=root.as_posix(), trigger=TRIGGER, steps=steps))
    _say(f"recipe:   {recipe}")
    return recipe


def _cli(*argv: str) -> int:
    """Run one lorafile command as a user would; a failure is reported, not fatal."""
    from lorafile.commands import main

    try:
        return main(list(argv))
    except SystemExit as err:  # argparse: e.g. a target that this build does not have
        return int(err.code or 0)
    except Exception as err:  # a broken step must not hide the ones after it
        print(f"lorafile {argv[0]} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def check_lint_compile(recipe: Path, root: Path) -> dict[str, int]:
    status = {"check": _cli("check", str(recipe)), "lint": _cli("lint", str(recipe))}
    for target in ("kohya", "simpletuner", "native"):
        status[f"compile {target}"] = _cli(
            "compile", str(recipe), "--target", target, "-o", str(root / "compiled" / target)
        )
    for step, code in status.items():
        _say(f"{step:<20} {'ok' if code == 0 else f'FAILED (exit {code}); continuing'}")
    return status


def train_and_measure(recipe: Path, root: Path):
    """Train, then the held-out loss on trigger captions without and with the adapter."""
    from lorafile.commands.plan import load_plan
    from lorafile.runtime.demo import heldout_loss
    from lorafile.runtime.evaluate.during import SampleScorer
    from lorafile.runtime.lorafiles import export
    from lorafile.runtime.models.sdxl import load_sdxl
    from lorafile.runtime.train.loop import TrainOptions, train

    result = train(load_plan(recipe), TrainOptions(sample_scorer=SampleScorer))
    models = load_sdxl(root / "model" / "tiny-sdxl.safetensors")
    before = heldout_loss(models, root / "dataset" / "heldout", TRIGGER)
    export.load_adapter(result.adapter, models)
    after = heldout_loss(models, root / "dataset" / "heldout", TRIGGER)
    return result, before, after


def evaluate(root: Path, run_folder: Path) -> Path:
    """`lorafile eval` on the run: base and both checkpoints at strength 1, 8 sampler steps."""
    from lorafile.runtime.evaluate.runner import EvalOptions, Evaluation
    from lorafile.runtime.evaluate.target import resolve_target

    prompts = root / "eval-prompts.txt"
    prompts.write_text(EVAL_PROMPTS.format(trigger=TRIGGER))
    options = EvalOptions(out=root / "eval", strengths=(0.0, 1.0), prompts=prompts, quiet=True)
    return Evaluation(resolve_target(run_folder), options).run()


def run_demo(root: Path, steps: int = 100) -> dict:
    """Everything the demo does, into `root` (which must be empty); returns what happened."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    # The tiny model's matrices are too small to split across threads: one thread is faster
    # than two, and much faster when other processes share the cores.
    torch.set_num_threads(1)
    recipe = build_inputs(root, steps)
    status = check_lint_compile(recipe, root)
    result, before, after = train_and_measure(recipe, root)
    report = evaluate(root, result.out)
    return {
        "status": status,
        "result": result,
        "before": before,
        "after": after,
        "recipe": recipe,
        "report": report,
    }


def run(args: argparse.Namespace) -> int:
    from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
    from lorafile.runtime.environment import require_train_extra
    from lorafile.runtime.train.run_state import refuse_file_in_the_way

    require_train_extra("demo")  # T569 names the extra to install
    start = time.perf_counter()
    root = real_path(args.output)
    refuse_file_in_the_way(root)  # T576, as `train -o` says it
    if root.exists() and any(root.iterdir()) and not args.force:
        bag = DiagnosticBag()
        bag.error(
            "T571",
            f"The demo folder `{root}` is not empty.",
            "pass --force to replace the demo in it, or choose another folder with -o",
        )
        raise DiagnosticError(bag.items)
    if args.force and root.exists():
        import shutil

        shutil.rmtree(root)
    from lorafile.commands.train import _quiet_libraries

    _quiet_libraries()
    demo = run_demo(root, args.steps)
    result, before, after = demo["result"], demo["before"], demo["after"]
    _say("")
    _say(
        f"learned:  held-out loss on '{TRIGGER}' captions {before:.4f} -> {after:.4f} ({1 - after / before:.0%} lower)"
    )
    _say(f"adapter:  {result.adapter} (kohya format; loads in ComfyUI, A1111, diffusers)")
    _say(f"samples:  {result.out / 'samples'} (one folder per checkpoint, grid.png in each)")
    _say(f"logs:     tensorboard --logdir {result.log_dir}")
    _say(f"configs:  {root / 'compiled'} (kohya/, simpletuner/, native/plan.json)")
    _say(f"recipe:   {demo['recipe']}")
    _say(f"eval:     {demo['report']} (grids, scores, loss curve; `lorafile eval` made it)")
    _say(f"done in {time.perf_counter() - start:.0f} s")
    return 0 if all(code == 0 for code in demo["status"].values()) else 1
