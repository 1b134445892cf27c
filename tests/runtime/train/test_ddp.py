"""DDP on CPU: `lorafile train PLAN --gpus 2 --cpu` (torchrun, gloo) against one process.

Two processes with batch 1 each and one process with batch 1 x accumulate 2 see the same
micro-batches with the same noise (drawn per micro-batch position), so after the same steps
both ranks hold bitwise identical adapters (only rank 0 writes; run.json records the ranks'
largest difference), equal to the single-process adapter up to float
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

from repo_paths import ROOT

BENCH = ROOT / "bench"
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


def train_both_ways(tmp: Path, tiny_sdxl_dir: Path):
    """Two CPU processes (torchrun) with batch 1, and one process with accumulate 2."""
    import tiny_run

    model = tiny_sdxl_dir / "tiny_sdxl.safetensors"
    data = tiny_run.make_dataset(tmp / "data", count=4)
    common = dict(steps=3, optimizer="sgd", lr=0.5)
    single = _plan_file(tmp, model, data, "single", accumulate=2, **common)
    ddp = _plan_file(tmp, model, data, "ddp", accumulate=1, **common)
    two = _lorafile(str(ddp), "-q", "--gpus", "2", "--cpu")
    # The single-process run in this process (no second interpreter start-up to pay for).
    from lorafile.runtime.train.loop import TrainOptions, train

    one = train(json.loads(single.read_text()), TrainOptions(device="cpu", quiet=True))
    return tmp, one, two


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_ddp_on_cpu(tmp_path, tiny_sdxl_dir):
    """One test, so that pytest-xdist never starts the runs twice on two workers."""
    runs = train_both_ways(tmp_path, tiny_sdxl_dir)
    check_startup(runs)
    check_ranks_identical(runs)
    check_equal_to_single_process(runs)


def check_startup(runs) -> None:
    _, one, two = runs
    assert one.steps == 3
    assert two.returncode == 0, two.stderr[-3000:]
    assert "effective batch = batch 1 x accumulate 1 x processes 2 = 2" in two.stdout
    assert "not scaled by the number of processes" in two.stdout


def check_ranks_identical(runs) -> None:
    """Rank 1 writes nothing; the ranks compare their adapters at the end (broadcast from
    rank 0, all-reduce of the largest difference) and rank 0 records it in run.json."""
    tmp, _, two = runs
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp / "out_ddp" / "tiny.safetensors").is_file()
    assert not (tmp / "out_ddp" / "ranks").exists()
    run = json.loads((tmp / "out_ddp" / "run.json").read_text())
    assert run["status"] == "finished" and run["ranks_max_difference"] == 0.0
    assert two.stdout.count("lorafile: wrote") == 1  # only rank 0 writes the adapter


def check_equal_to_single_process(runs) -> None:
    import torch

    tmp, one, two = runs
    assert two.returncode == 0, two.stderr[-3000:]
    single = _adapter(one.adapter)
    assert one.adapter == tmp / "out_single" / "tiny.safetensors"
    ddp = _adapter(tmp / "out_ddp" / "tiny.safetensors")
    ups = [k for k in single if "lora_up" in k]
    # The adapter learned something (lora_up starts at zero) ...
    assert max(single[k].abs().max().item() for k in ups) > 1e-3
    # ... and the two runs learned the same thing.
    for k in single:
        assert torch.allclose(single[k], ddp[k], rtol=1e-4, atol=1e-6), k
