"""Random LoRA / LoCon / LoHa files on the tiny model, for the merge, combine and resize tests
(tests/runtime/lorafiles/): a peft adapter with non-zero weights on a copy of the model,
written by lorafile's exporter, and fixed inputs to compare outputs on."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import pytest
import torch

from lorafile.runtime.lorafiles import export
from lorafile.runtime.lorafiles.convert import read_lora
from lorafile.runtime.lorafiles.keys import COMPONENTS, peft_target_modules
from lorafile.runtime.lorafiles.lowrank import delta_matrix

CONV = r"(resnets\.\d+\.conv[12]|(down|up)samplers\.0\.conv)"


def models_of(comp) -> dict:
    return {c: getattr(comp, c) for c in COMPONENTS}


def adapted(base, seed: int = 0, algo: str = "lora", rank: int = 4, alpha: float = 8.0):
    """A copy of `base` with a random adapter on attention, ff, the 3x3 convs (LoCon at rank 2,
    alpha 3) text encoder 1 (rank 4, alpha 2) and
    text encoder 2 (rank 2, alpha 3: its q/k/v are fused in the single file); `algo="loha"`: LoHa on the UNet."""
    from peft import LoHaConfig, LoraConfig, inject_adapter_in_model

    comp = copy.deepcopy(base)
    targets = peft_target_modules(models_of(comp), ["attention", "ff", "conv", "text"])
    torch.manual_seed(seed)
    if algo == "loha":
        config = LoHaConfig(r=rank, alpha=alpha, target_modules=targets["unet"], init_weights=False)
        comp.unet.add_adapter(config)
        return comp
    unet = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets["unet"],
                      init_lora_weights=False, rank_pattern={CONV: 2}, alpha_pattern={CONV: 3})  # fmt: skip
    comp.unet.add_adapter(unet)
    te1 = LoraConfig(r=4, lora_alpha=2, target_modules=targets["text_encoder"],
                     init_lora_weights=False)  # fmt: skip
    inject_adapter_in_model(te1, comp.text_encoder)
    te2 = LoraConfig(r=2, lora_alpha=3, target_modules=targets["text_encoder_2"],
                     init_lora_weights=False)  # fmt: skip
    inject_adapter_in_model(te2, comp.text_encoder_2)
    return comp


def kohya_module(name: str, generator, alpha: float | None = 2.0) -> dict:
    """One rank-4 kohya LoRA module on a 64-wide layer, random from `generator` (lora_down
    drawn first, then lora_up); `alpha=None` leaves the alpha out."""
    tensors = {
        f"{name}.lora_down.weight": torch.randn(4, 64, generator=generator),
        f"{name}.lora_up.weight": torch.randn(64, 4, generator=generator),
    }
    if alpha is not None:
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    return tensors


def lora_file(base, path: Path, **kwargs) -> Path:
    """A kohya-layout file of `adapted(base, **kwargs)`."""
    comp = adapted(base, **kwargs)
    return export.save_adapter(comp, path, metadata={"ss_output_name": path.stem})


def modules_by_key(path) -> dict:
    """The modules of the LoRA file at `path` by (component, path)."""
    return {(m.component, m.path): m for m in read_lora(path).modules}


def deltas(path) -> dict:
    """(component, path) -> ΔW as a float64 numpy matrix."""
    return {key: delta_matrix(m).numpy() for key, m in modules_by_key(path).items()}


def unet_output(comp):
    """The UNet's prediction on fixed inputs (the tiny model's shapes)."""
    g = torch.Generator().manual_seed(1)
    latents, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 96, generator=g)
    cond = {"text_embeds": torch.randn(1, 64, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}  # fmt: skip
    with torch.no_grad():
        return comp.unet(latents, torch.tensor([10]), emb, added_cond_kwargs=cond).sample


def text_outputs(comp):
    """Both text encoders' penultimate hidden states on fixed tokens."""
    tokens = torch.randint(0, 512, (1, 77), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        te1 = comp.text_encoder(tokens, output_hidden_states=True).hidden_states[-2]
        te2 = comp.text_encoder_2(tokens, output_hidden_states=True).hidden_states[-2]
    return te1, te2


def _openblas_setter():
    """numpy's bundled OpenBLAS `set_num_threads`, or None (another BLAS, another build)."""
    import ctypes
    import glob

    import numpy

    for lib in glob.glob(
        os.path.join(os.path.dirname(numpy.__file__), "..", "numpy.libs", "*openblas*")
    ):
        handle = ctypes.CDLL(lib)
        for name in (
            "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads64_",
            "openblas_set_num_threads",
        ):
            if hasattr(handle, name):
                return getattr(handle, name)
    return None


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """`one_thread` around a whole module that imports this autouse fixture
    (`from lora_factory import single_threaded as single_threaded`)."""
    with one_thread():
        yield


@contextlib.contextmanager
def one_thread():
    """torch and numpy's BLAS on one thread: the tiny model's matrices are small, and on a
    shared 2-core CI box idle BLAS threads spinning against each other make a 0.2 s loop of
    SVDs take 20 s."""
    threads, setter = torch.get_num_threads(), _openblas_setter()
    torch.set_num_threads(1)
    if setter is not None:
        setter(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if setter is not None:
            setter(os.cpu_count() or 1)
