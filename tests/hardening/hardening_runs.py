"""Helpers of the hardening tests (tests/hardening/): a few-step tiny run as a plan.json or a
recipe file, `lorafile` in-process or in a subprocess, and the errors a disk can raise."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from lorafile.runtime.demo import make_dataset
from lorafile.spec.models import Cache, Interval, Log, Save
from train_runs import one_thread as one_thread  # autouse fixture, for the hardening tests
from train_runs import plan_for, short_train, tiny_recipe

SUBPROCESS_TIMEOUT = 300
"""Seconds a `lorafile` subprocess may take: a hang (e.g. reading a FIFO) fails the test."""


def tiny_plan(model_dir: Path, tmp: Path, images: int = 2, save_every=None, **train) -> Path:
    """plan.json of a 2-step run on `images` images in tmp/data (kohya output, no samples, no
    TensorBoard); `train` overrides fields of the Train block. Returns the plan's path."""
    if not (tmp / "data").exists():
        make_dataset(tmp / "data", images, seed=1)
    settings = dict(seed=5, cache=Cache(latents=True, text=True, location="disk"))
    recipe = tiny_recipe(
        model_dir / "diffusers",
        tmp / "data",
        tmp / "out",
        train=short_train(**(settings | train)),
        save=Save(every=Interval(every=save_every) if save_every else None),
        sample=None,
        log=Log(),
    )
    path = tmp / "plan.json"
    path.write_text(json.dumps(plan_for(recipe)))
    return path


RECIPE = """\
recipe "tiny"
base sdxl "{base}"
dataset "{data}" {{
    captions txt
    resolution 64
    buckets 64..128 step 32
}}
trigger "zqx"
adapter lora {{
    rank 4
}}
train {{
    steps 2
    lr 1e-3
    optimizer adamw8bit
    precision no
    checkpointing off
    cache latents text disk
    seed 1
}}
output "{out}"
"""


def tiny_recipe_file(model_dir: Path, tmp: Path, images: int = 2) -> Path:
    """A recipe file of a 2-step run (8-bit AdamW: bitsandbytes is imported) on tmp/data."""
    if not (tmp / "data").exists():
        make_dataset(tmp / "data", images, seed=1)
    path = tmp / "tiny.recipe"
    text = RECIPE.format(base=model_dir / "diffusers", data=tmp / "data", out=tmp / "out")
    path.write_text(text)
    return path


def lorafile_subprocess(*argv: str, prelude: str = "", env: dict | None = None):
    """`lorafile ARGV` in a fresh interpreter on one thread, after running `prelude` (Python
    source, e.g. one that breaks an import); a hang fails with TimeoutExpired."""
    code = f"{prelude}\nimport sys\nfrom lorafile.cli import main\nsys.exit(main({list(argv)!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def os_error(number: int, path: str = "") -> OSError:
    """The OSError a write raises for `number` (ENOSPC, EROFS, ...)."""
    return OSError(number, os.strerror(number), path or None)


def safetensors_error(number: int = errno.ENOSPC):
    """What safetensors' save_file raises when the disk is full: its own error type."""
    from safetensors import SafetensorError

    return SafetensorError(
        f"Error while serializing: I/O error: {os.strerror(number)} (os error {number})"
    )
