"""`lorafile train R.recipe|plan.json`: train the adapter with lorafile's native trainer."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the adapter with lorafile's own trainer (torch, diffusers, peft)",
        description=(
            "Train a recipe (or a plan.json from `compile --target native`). Writes checkpoints, "
            "samples, TensorBoard logs and the final adapter into the output folder."
        ),
    )
    p.add_argument("input", type=Path, help="a .recipe file or a plan.json")
    p.add_argument(
        "-o", "--output", type=Path, help="output folder (default: the recipe's `output`)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in the output folder from its latest checkpoint (or the one named)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an earlier run in the output folder"
    )
    p.add_argument(
        "--format",
        choices=("kohya", "diffusers"),
        help="adapter file layout (default: the recipe's `save` layout, kohya unless set)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow a .ckpt/.pt/.bin base model (unpickling runs code from the file)",
    )
    p.add_argument(
        "--device", help="torch device, e.g. cuda:1 (default: cuda when available, else cpu)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--log-every",
        type=int,
        default=10,
        metavar="N",
        help="steps between reading the loss back from the GPU (progress, TensorBoard, NaN "
        "check); the loop never waits for the GPU in between (default 10)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet, one graph per bucket shape: faster steps on a GPU, but "
        "the first step of each bucket shape compiles (minutes for SDXL)",
    )
    from lorafile.runtime import launch  # torch-free at import

    launch.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorafile.commands.plan import load_plan
    from lorafile.runtime.train import TrainOptions, train

    plan = load_plan(args.input)
    _quiet_libraries()
    from lorafile.runtime import launch

    if launch.should_launch(plan, args):  # --gpus N / hardware gpus: start N processes
        return launch.launch(plan, args)
    resume = Path(args.resume) if isinstance(args.resume, str) else args.resume
    options = TrainOptions(
        out=args.output,
        resume=resume,
        force=args.force,
        format=args.format,
        allow_pickle=args.allow_pickle,
        device=args.device,
        quiet=args.quiet,
        log_every=args.log_every,
        compile=args.compile,
    )
    result = launch.train(plan, options) if launch.in_worker() else train(plan, options)
    print(f"adapter: {result.adapter}")
    if result.log_dir:
        print(f"logs:    {result.log_dir}  (tensorboard --logdir {result.log_dir})")
    return 0


def _quiet_libraries() -> None:
    """transformers' per-file loading bars and torchvision notes drown the trainer's own lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
