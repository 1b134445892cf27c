"""`lorafile train R.recipe|plan.json`: train the adapter with lorafile's native trainer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorafile.runtime.train import launch  # torch-free at import, as is diffusion
from lorafile.runtime.train.defaults import DEFAULT_LOG_EVERY
from lorafile.runtime.train.diffusion import COMPILE_MODES, COMPILE_SCOPES


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
        default=DEFAULT_LOG_EVERY,
        metavar="N",
        help="steps between reading the loss back from the GPU (progress, TensorBoard, NaN "
        "check); the loop never waits for the GPU in between (default %(default)s)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet's repeated blocks, one graph per block width and bucket "
        "shape: faster steps, but the first step of each bucket shape compiles",
    )
    p.add_argument(
        "--compile-scope",
        choices=COMPILE_SCOPES,
        help="what --compile compiles (implies --compile): blocks, each repeated transformer "
        "block (the default); unet, the whole UNet as one graph (faster steps on small "
        "models, a much longer first step: minutes for SDXL)",
    )
    p.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        help="the torch.compile mode (implies --compile): reduce-overhead also records each "
        "bucket shape as a CUDA graph and replays it (one launch per step); default: default",
    )
    p.add_argument(
        "--graphs",
        choices=("on", "off"),
        help="on CUDA, capture each bucket shape's step as a CUDA graph and replay it; "
        "default: the recipe's `train { graphs }` (on)",
    )
    launch.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorafile.runtime.environment import require_train_extra

    # T569 names the extra to install before anything is written (a part of the extra that
    # breaks later is mapped to T569 by `commands.main`, for every command).
    require_train_extra()
    from lorafile.commands.plan import load_plan
    from lorafile.runtime.evaluate.during import SampleScorer
    from lorafile.runtime.train.loop import Trainer, TrainOptions

    plan = load_plan(args.input)
    _quiet_libraries()
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
        compile=args.compile_mode or args.compile or bool(args.compile_scope),
        compile_scope=args.compile_scope or "blocks",
        sample_scorer=SampleScorer,
        graphs=None if args.graphs is None else args.graphs == "on",
    )
    trainer = launch.trainer(plan, options) if launch.in_worker() else Trainer(plan, options)
    try:
        trainer.setup()
    except KeyboardInterrupt:  # loading or caching: nothing trained yet (cache entries are atomic)
        wrote = trainer.abandon("interrupted before training started")
        if launch.rank() == 0:
            print(_not_started(args, wrote), file=sys.stderr)
        return 130
    return _train(trainer, args)


def _train(trainer, args: argparse.Namespace) -> int:
    """Run the loop; a signal ends it with a checkpoint, 130 (SIGINT) or 143 (SIGTERM)."""
    from lorafile.runtime.train.checkpoint import latest_checkpoint
    from lorafile.runtime.train.loop import TrainingInterrupted

    # In a DDP worker the launcher prints the command (the worker's input is a temp plan).
    again = None if launch.in_worker() else launch.resume_command(args)
    try:
        result = trainer.train()
    except TrainingInterrupted as stop:
        if trainer.writes:
            print(stop.sentence(again), file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C while stopping: aborted at once
        if trainer.abandon("aborted at once by a second signal"):
            last = latest_checkpoint(trainer.out)
            print(
                f"Aborted at once after step {trainer.step}; the steps after the last "
                f"checkpoint ({last or 'none was saved'}) are lost."
                + (f" To continue from it, run: {again}" if last and again else ""),
                file=sys.stderr,
            )
        return 130
    print(f"adapter: {result.adapter}")
    if result.log_dir:
        print(f"logs:    {result.log_dir}  (tensorboard --logdir {result.log_dir})")
    return 0


def _not_started(args: argparse.Namespace, wrote_run_file: bool) -> str:
    """The sentence for a Ctrl-C before the first step (an aborted run with no checkpoint is
    replaced by the next run without --force: runtime/train/run_state.py)."""
    how = "run the same command again"
    if wrote_run_file and not args.resume:
        how += " (the caches filled so far are reused)"
    return f"Interrupted before training started; nothing was lost. To train, {how}."


def _quiet_libraries() -> None:
    """transformers' per-file loading bars and torchvision notes drown the trainer's own lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
