"""DDP on CPU: `lorafile train PLAN --gpus 2 --cpu` (torchrun, gloo) against one process.

Two processes with batch 1 each and one process with batch 1 x accumulate 2 see the same
micro-batches with the same noise (drawn per micro-batch position), so after the same steps
both ranks hold bitwise identical adapters, equal to the single-process adapter up to float
summation order. SGD keeps that comparison linear in the gradients: Adam divides by
sqrt(v) + 1e-8 and turns last-bit differences of near-zero gradients into visible ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def _plan_file(tmp: Path, model: Path, data: Path, name: str, **train) -> Path:
    import tiny_run

    recipe = tiny_run.tiny_recipe(model, data, tmp / f"out_{name}", **train)
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(tiny_run.tiny_plan(recipe, tmp)))
    return path


def _lorafile(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lorafile", "train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_sdxl_dir):
    import tiny_run

    tmp = tmp_path_factory.mktemp("ddp")
    model = tiny_sdxl_dir / "tiny_sdxl.safetensors"
    data = tiny_run.make_dataset(tmp / "data", count=4)
    common = dict(steps=3, optimizer="sgd", lr=0.5)
    single = _plan_file(tmp, model, data, "single", accumulate=2, **common)
    ddp = _plan_file(tmp, model, data, "ddp", accumulate=1, **common)
    one = _lorafile(str(single), "-q", "--device", "cpu")
    two = _lorafile(str(ddp), "-q", "--gpus", "2", "--cpu")
    return tmp, one, two


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_two_processes_start_and_state_batch_and_lr(runs):
    _, one, two = runs
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert "effective batch = batch 1 x accumulate 1 x processes 2 = 2" in two.stdout
    assert "not scaled by the number of processes" in two.stdout


@pytest.mark.slow
def test_both_ranks_end_with_identical_adapters(runs):
    tmp, _, two = runs
    assert two.returncode == 0, two.stderr[-3000:]
    rank0 = _adapter(tmp / "out_ddp" / "tiny.safetensors")
    rank1 = _adapter(tmp / "out_ddp" / "ranks" / "rank1" / "tiny.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    import torch

    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


@pytest.mark.slow
def test_ddp_equals_single_process_with_the_same_global_batch(runs):
    import torch

    tmp, one, two = runs
    assert one.returncode == 0 and two.returncode == 0
    single = _adapter(tmp / "out_single" / "tiny.safetensors")
    ddp = _adapter(tmp / "out_ddp" / "tiny.safetensors")
    ups = [k for k in single if "lora_up" in k]
    # The adapter learned something (lora_up starts at zero) ...
    assert max(single[k].abs().max().item() for k in ups) > 1e-3
    # ... and the two runs learned the same thing.
    for k in single:
        assert torch.allclose(single[k], ddp[k], rtol=1e-4, atol=1e-6), k
