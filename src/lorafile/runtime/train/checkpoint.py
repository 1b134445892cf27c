"""Checkpoints: the adapter plus the full training state, written atomically, last K kept.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding
  adapter.safetensors  the adapter in fp32 with peft names (prefix unet./text_encoder./
                       text_encoder_2.): what a resume loads, bit for bit
  state.pt             optimizer, lr scheduler, grad scaler, step, position in the data order,
                       RNG states, seed, the EMA shadow and its update count (tensors and
                       plain values only: loaded weights_only)
  <name>-stepNNNNNN.safetensors   the same adapter in the user's format and precision
  <name>-stepNNNNNN-ema.safetensors   its moving average, with `ema` in the recipe
It is written into a hidden temp folder (a unique name per save) that is renamed into place as
the last step, so an interrupted save never leaves a folder that looks complete.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

from lorafile.compiler.diagnostics import fail, first_line

CHECKPOINTS = "checkpoints"
TEMP_SUFFIX = ".tmp"
STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temp folders start with '.')."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def save_checkpoint(
    out: Path, step: int, adapter: dict, state: dict, export, keep: int | None
) -> Path:
    """Write one checkpoint atomically; `export(path)` writes the user-format adapter file."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    final = step_dir(out, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent))
    try:
        save_file({k: v.contiguous() for k, v in adapter.items()}, tmp / "adapter.safetensors")
        # torch.save reports a full disk as an opaque RuntimeError ("unexpected pos"): pickle to
        # memory, then write with Python, whose OSError says ENOSPC (the state is small).
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (tmp / "state.pt").write_bytes(buffer.getbuffer())
        export(tmp)
        if final.exists():  # a resumed run re-saving a step: replace the old copy
            shutil.rmtree(final)
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private; a checkpoint is not
        os.replace(tmp, final)  # the commit point: the folder appears complete or not at all
    except BaseException:  # a full disk, or a second Ctrl-C while stopping: no temp folder left
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(out, keep)
    return final


def remove_temp_folders(out: Path) -> None:
    """Remove the temp folders of saves that were killed (call it holding the folder's lock:
    another run's save in progress looks the same)."""
    folder = out / CHECKPOINTS
    if folder.is_dir():
        for tmp in folder.glob(f".step-*{TEMP_SUFFIX}"):
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(out: Path, keep: int | None) -> None:
    if keep is None:
        return
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(folder: Path) -> tuple[dict, dict]:
    """(adapter weights, training state) of a checkpoint folder; T572 naming the folder when
    either file cannot be read (a copy cut short, a disk error), not a torch traceback."""
    import torch
    from safetensors.torch import load_file

    try:
        adapter = load_file(folder / "adapter.safetensors")
    except Exception as err:  # safetensors raises its own error types for a bad header
        why = f"adapter.safetensors is not readable safetensors ({first_line(err)})"
        raise _damaged(folder, why) from err
    try:
        state = torch.load(folder / "state.pt", weights_only=True)  # no code runs on load
    except Exception as err:  # torch's message talks of weights_only, not of the file
        raise _damaged(folder, "state.pt is cut short or not a state lorafile saved") from err
    if not isinstance(state, dict) or "step" not in state:  # another program's state file
        raise _damaged(folder, "state.pt holds no training state lorafile saved")
    return adapter, state


def _damaged(folder: Path, why: str):
    return fail(
        "T572",
        f"The checkpoint `{folder}` cannot be read: {why}.",
        "resume from an earlier checkpoint with --resume PATH, or start again with --force "
        "(which removes the run's checkpoints)",
    )


def rng_state() -> dict:
    """Every global RNG a step can touch (peft dropout draws from torch's)."""
    import random

    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


# ---------------------------------------------------------------------------------------------
# The adapter file


def export_adapter(path: Path, models, fmt: str, precision: str, facts: dict, ema=None) -> Path:
    """Write the models' live adapter to `path` in `fmt` (kohya: original SDXL block names with
    alpha tensors, ss_* and modelspec metadata; diffusers: the peft layout, alpha in the
    metadata) through the one converter in runtime/lorafiles/export.py, atomically. With an
    `ema` (runtime/train/ema.py), its average is written first as `NAME-ema.safetensors`."""
    from lorafile.runtime.lorafiles import export
    from lorafile.runtime.train.ema import ema_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ema is not None:
        with ema.applied():
            ema_facts = {
                **facts,
                "lorafile.ema_decay": ema.decay,
                "lorafile.ema_updates": ema.updates,
            }
            export_adapter(ema_path(path), models, fmt, precision, ema_facts)
    return export.save_adapter(
        models,
        path,
        layout=fmt,
        metadata=facts,
        dtype=precision,
        title=facts.get("ss_output_name", ""),
    )
