"""The launcher's decisions (runtime/train/launch.py), without starting processes."""

from __future__ import annotations

import argparse
import sys

import pytest

from lorafile.runtime.train import launch


def _plan(gpus=1, machines=1, batch=2, accumulate=3, lr=1e-4, address=None, port=None):
    return {
        "recipe": {
            "train": {"batch": batch, "accumulate": accumulate, "lr": lr},
            "hardware": {
                "gpus": gpus,
                "machines": machines,
                "main_address": address,
                "main_port": port,
            },
        },
        "resolved": {"unet_lr": lr, "seed": None},
    }


def _args(*argv):
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("-o", "--output")
    p.add_argument("--resume", nargs="?", const=True, default=False)
    p.add_argument("--force", action="store_true")
    p.add_argument("--format")
    p.add_argument("--allow-pickle", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    launch.add_arguments(p)
    return p.parse_args(["r.recipe", *argv])


def test_world_comes_from_hardware_and_the_command_line_overrides_it():
    plan = _plan(gpus=4, machines=2, address="10.0.0.1", port=29501)
    assert launch.world_of(plan, _args()).processes == 8
    w = launch.world_of(plan, _args("--gpus", "2", "--machines", "3"))
    assert (w.gpus, w.machines, w.processes, w.main_address) == (2, 3, 6, "10.0.0.1")


def test_one_process_does_not_launch(monkeypatch):
    monkeypatch.delenv(launch.WORKER_ENV, raising=False)
    assert not launch.should_launch(_plan(), _args())
    assert launch.should_launch(_plan(), _args("--gpus", "2"))
    assert launch.should_launch(_plan(gpus=2), _args())


def test_workers_never_launch_again(monkeypatch):
    monkeypatch.setenv(launch.WORKER_ENV, "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launch.should_launch(_plan(gpus=2), _args("--gpus", "2"))


def test_startup_statement_gives_effective_batch_and_unscaled_lr():
    text = launch.startup_statement(_plan(lr=2e-4), launch.World(gpus=4))
    assert "effective batch = batch 2 x accumulate 3 x processes 4 = 24" in text
    assert "lr 0.0002 is used as written, not scaled" in text
    assert "set lr 0.0008" in text


def test_single_machine_uses_a_free_port():
    cmd = launch.torchrun_command(launch.World(gpus=2), "plan.json", ["-q"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and "--standalone" in cmd
    assert cmd[-5:] == ["-m", "lorafile", "train", "plan.json", "-q"]


def test_multi_machine_passes_rendezvous_settings():
    world = launch.World(
        gpus=8, machines=2, machine_rank=1, main_address="10.1.2.3", main_port=1234
    )
    cmd = launch.torchrun_command(world, "plan.json", [])
    for part in ("--nnodes=2", "--node_rank=1", "--master_addr=10.1.2.3", "--master_port=1234"):
        assert part in cmd
    assert "--standalone" not in cmd


def test_worker_arguments_keep_the_users_options(tmp_path):
    args = _args("-o", str(tmp_path), "--force", "--cpu", "--format", "diffusers", "--resume")
    out = launch.worker_args(args)
    assert out[:2] == ["-o", str(tmp_path.resolve())]
    assert {"--force", "--cpu", "--resume"} <= set(out)
    assert out[out.index("--format") + 1] == "diffusers"
    assert "--gpus" not in out  # the worker count is torchrun's


def test_prepare_plan_fixes_one_seed_for_all_ranks(tmp_path):
    plan = launch.prepare_plan(_plan(gpus=2), tmp_path / "r.recipe", launch.World(gpus=2))
    assert isinstance(plan["resolved"]["seed"], int)
    assert plan["base_dir"] == str(tmp_path.resolve())
    kept = _plan(gpus=2)
    kept["resolved"]["seed"] = 42
    assert launch.prepare_plan(kept, tmp_path / "r", launch.World(gpus=2))["resolved"]["seed"] == 42


@pytest.mark.parametrize(("rank", "quiet"), [("0", False), ("1", True), ("3", True)])
def test_ranks_share_the_output_folder_and_only_rank_zero_shows_progress(
    monkeypatch, tmp_path, rank, quiet
):
    """No per-rank output folders any more: rank 0 alone writes (Trainer.writes)."""
    from dataclasses import dataclass

    @dataclass
    class Options:
        out: object = None
        device: object = None
        quiet: bool = False

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    plan = {"resolved": {"output": {"path": str(tmp_path)}}}
    opts = launch.worker_options(Options(), plan)
    assert opts.device == "cpu" and opts.out is None and opts.quiet is quiet


def test_micro_batches_are_split_by_rank_and_positions_agree(monkeypatch):
    """Rank r computes micro-batches r, r+N, ... of each step; all ranks end the step at the
    same data position (what a checkpoint stores)."""
    cls = launch.distributed_trainer_class()
    seen = {}
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", "3")
        trainer = cls.__new__(cls)
        trainer.accumulate, trainer.position = 2, (0, 0)
        stream = iter([(0, i, [f"b{i}"]) for i in range(12)])
        got = [index for _, index, _ in trainer.micro_batches(stream)]
        seen[r] = (got, trainer.position)
    assert seen[0] == ([0, 3], (0, 6))
    assert seen[1] == ([1, 4], (0, 6))
    assert seen[2] == ([2, 5], (0, 6))


def test_launch_module_is_torch_free_at_import():
    import subprocess

    code = "import sys, lorafile.runtime.train.launch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_nan_guard_over_ranks_keeps_the_earliest_bad_step(monkeypatch):
    """Without a process group the guard is this rank's own; the DDP trainer routes it
    through earliest_bad_step (an all-reduce MIN of the step) at the same steps on every rank."""
    import math

    import torch

    from lorafile.runtime.train.logging import StepGuard

    guard = StepGuard(torch.device("cpu"))
    guard.record(torch.tensor(0.5), 1)
    assert math.isinf(launch.earliest_bad_step(guard.state)[0])
    guard.record(torch.tensor(math.inf), 2)
    guard.record(torch.tensor(math.nan), 3)
    cls = launch.distributed_trainer_class()
    trainer = cls.__new__(cls)
    step, value = trainer.reduce_guard(guard.state).tolist()
    assert (step, value) == (2.0, math.inf)
    assert launch.adapter_difference([torch.ones(3)]) is None  # one process: nothing to compare
    assert launch.global_sum([1.0, 2.5]) == 3.5
