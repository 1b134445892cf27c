"""Shared pytest fixtures. Others add fixtures here too: keep edits additive."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `from strategies import recipes` and `from tests.strategies import recipes` both work.
for _dir in (Path(__file__).parent, Path(__file__).parent.parent):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """The tiny SDXL-shaped model (seed 0) saved once per session, both ways.

    Returns the folder holding `diffusers/` (a diffusers pipeline folder) and
    `tiny_sdxl.safetensors` (the same weights as one file in the original SDXL layout).
    Load with `lorafile.runtime.models.sdxl.load_sdxl(path)` or diffusers' `from_pretrained`.
    """
    from lorafile.runtime.models.tiny import build_tiny_sdxl, save_tiny_sdxl

    root = tmp_path_factory.mktemp("tiny_sdxl")
    model = build_tiny_sdxl(seed=0)
    save_tiny_sdxl(root / "diffusers", model=model)
    save_tiny_sdxl(root / "tiny_sdxl.safetensors", as_single_file=True, model=model)
    return root


@pytest.fixture
def tiny_sdxl(tiny_sdxl_dir):
    """A fresh, writable copy of the tiny model (loaded from the session's diffusers folder)."""
    from lorafile.runtime.models.sdxl import load_sdxl

    return load_sdxl(tiny_sdxl_dir / "diffusers")


@pytest.fixture(scope="session")
def listening_sdxl(tmp_path_factory):
    """The tiny model taught to follow its prompt (tests/listening_model.py: deterministic VAE,
    UNet fine-tuned on "a red circle", ...), built on one thread and saved once per session as
    one `.safetensors` file in the original SDXL layout; returns its path."""
    import torch

    from listening_model import build_listening_model
    from lorafile.runtime.models.tiny import save_tiny_sdxl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float sums, so the same model, every run
    try:
        models = build_listening_model(seed=0)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("listening_sdxl") / "listening_sdxl.safetensors"
    save_tiny_sdxl(path, as_single_file=True, model=models)
    return path
