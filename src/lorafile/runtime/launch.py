"""Several GPUs and machines: `lorafile train R --gpus N` runs the native trainer under DDP.

How a run is spread (the same as accelerate's DDP, which the trainer already uses):

* The launcher (this module, in the process the user started) resolves the plan once, fixes
  the seed (every process must draw the same adapter initialisation and data order), writes
  the plan to a file and starts `torch.distributed.run` (torchrun) with one worker process per
  GPU. torchrun is used rather than `accelerate launch` because it works the same on GPU and
  CPU hosts: `accelerate launch --cpu --num_processes 2` starts only one process
  (reference/diffusers_peft.md §8), while torchrun + `Accelerator(cpu=True)` gives gloo DDP.
* Each worker runs `DistributedTrainer`: every process walks the same stream of micro-batches
  and computes every N-th one (rank r takes micro-batches r, r+N, ...); gradients are averaged
  across processes (one flat all-reduce, as DDP's buckets do) before clipping and the
  optimizer step. A step with N processes therefore sees exactly the micro-batches a single
  process with `accumulate` x N would see, with the same noise and timesteps (they are drawn
  per micro-batch position), and ends with the same adapter up to float summation order.
* Only rank 0 writes (run.json, checkpoints, samples, logs, the adapter); the other ranks
  wait at a barrier while it does. Caches are filled once: a disk cache by the first process
  of each machine, an in-memory cache by rank 0 and sent to the others (cache.fill_once).
  At the end the ranks compare their adapters; run.json records the largest difference
  (`ranks_max_difference`, 0.0 when they agree bit for bit).

Effective batch = batch x accumulate x processes. The learning rate is NOT scaled with the
number of processes: each optimizer step averages over more images, so the same lr takes steps
of the same size with less noise. Scale it yourself if you follow the linear-scaling rule.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

WORKER_ENV = "LORAFILE_DDP_WORKER"
"""Set by the launcher for the processes it starts: they train instead of launching again."""


@dataclass(frozen=True)
class World:
    """Where the processes of one run are: GPUs per machine, machines, rendezvous."""

    gpus: int = 1
    machines: int = 1
    machine_rank: int = 0
    main_address: str | None = None
    main_port: int | None = None
    cpu: bool = False

    @property
    def processes(self) -> int:
        return self.gpus * self.machines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launch options of `lorafile train` (each overrides the recipe's `hardware`)."""
    g = parser.add_argument_group("several GPUs or machines (DDP)")
    g.add_argument("--gpus", type=int, help="processes (GPUs) per machine (default: hardware gpus)")
    g.add_argument("--machines", type=int, help="machines in the run (default: hardware machines)")
    g.add_argument("--machine-rank", type=int, default=0, help="this machine's index, 0 = main")
    g.add_argument("--main-address", help="address of the main machine (multi-machine runs)")
    g.add_argument("--main-port", type=int, help="rendezvous port on the main machine")
    g.add_argument(
        "--cpu",
        action="store_true",
        help="run the processes on the CPU (gloo), e.g. to test a multi-GPU recipe without GPUs",
    )


def world_of(plan: dict, args: argparse.Namespace | None = None) -> World:
    """The recipe's `hardware` block, overridden by the command line."""
    hw = plan["recipe"].get("hardware") or {}
    get = (lambda name: getattr(args, name, None)) if args is not None else (lambda _: None)
    return World(
        gpus=get("gpus") or hw.get("gpus") or 1,
        machines=get("machines") or hw.get("machines") or 1,
        machine_rank=get("machine_rank") or 0,
        main_address=get("main_address") or hw.get("main_address"),
        main_port=get("main_port") or hw.get("main_port"),
        cpu=bool(get("cpu")),
    )


def in_worker() -> bool:
    """True inside a process started by `launch` (torchrun sets WORLD_SIZE as well)."""
    return os.environ.get(WORKER_ENV) == "1" and "WORLD_SIZE" in os.environ


def should_launch(plan: dict, args: argparse.Namespace) -> bool:
    return not in_worker() and world_of(plan, args).processes > 1


def startup_statement(plan: dict, world: World) -> str:
    """The one paragraph a multi-process run prints first: batch and lr semantics."""
    t = plan["recipe"]["train"]
    batch, accumulate = t["batch"], t["accumulate"]
    lr = plan["resolved"].get("unet_lr", t["lr"])
    effective = batch * accumulate * world.processes
    where = "CPU processes (gloo)" if world.cpu else "GPUs"
    return (
        f"lorafile: DDP over {world.processes} {where} ({world.machines} machine(s) x "
        f"{world.gpus}); effective batch = batch {batch} x accumulate {accumulate} x "
        f"processes {world.processes} = {effective} images per optimizer step.\n"
        f"lorafile: lr {lr:g} is used as written, not scaled by the number of processes "
        f"(each step averages {effective} images); to follow the linear-scaling rule, set "
        f"lr {lr * world.processes:g} in the recipe yourself."
    )


def torchrun_command(world: World, plan_file: Path, train_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run ... -m lorafile train PLAN ...` for this machine."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world.gpus}"]
    if world.machines == 1 and world.main_port is None:
        cmd.append("--standalone")  # a free local port, no clash between concurrent runs
    else:
        cmd += [
            f"--nnodes={world.machines}",
            f"--node_rank={world.machine_rank}",
            f"--master_addr={world.main_address or '127.0.0.1'}",
            f"--master_port={world.main_port or 29500}",
        ]
    return [*cmd, "-m", "lorafile", "train", str(plan_file), *train_args]


def worker_args(args: argparse.Namespace) -> list[str]:
    """The `lorafile train` options a worker needs (the input is replaced by the plan file)."""
    out: list[str] = []
    if getattr(args, "output", None):
        out += ["-o", str(Path(args.output).resolve())]
    if args.resume:
        out += ["--resume"] + ([] if args.resume is True else [str(args.resume)])
    for flag in ("force", "allow_pickle", "quiet", "cpu", "compile"):
        if getattr(args, flag, False):
            out.append("--" + flag.replace("_", "-"))
    if getattr(args, "format", None):
        out += ["--format", args.format]
    if getattr(args, "log_every", None):
        out += ["--log-every", str(args.log_every)]
    return out


def prepare_plan(plan: dict, input_path: Path, world: World) -> dict:
    """The plan every process trains: built for this many processes (steps per epoch and the
    effective batch depend on it) and with the seed fixed (all ranks must draw the same)."""
    base_dir = Path(plan.get("base_dir") or input_path.resolve().parent)
    hw = plan["recipe"].get("hardware") or {}
    wanted = {"gpus": world.gpus, "machines": world.machines}
    if any(hw.get(k, 1) != v for k, v in wanted.items()):
        plan = _rebuild(plan, base_dir, wanted)
    plan = json.loads(json.dumps(plan))
    if plan["resolved"].get("seed") is None:
        plan["resolved"]["seed"] = secrets.randbelow(2**32)
    plan["base_dir"] = str(base_dir)
    return plan


def _rebuild(plan: dict, base_dir: Path, hardware: dict) -> dict:
    from lorafile.compiler.diagnostics import DiagnosticBag
    from lorafile.runtime.plan import build_plan, recipe_of

    recipe = recipe_of(plan)
    recipe = recipe.model_copy(update={"hardware": recipe.hardware.model_copy(update=hardware)})
    bag = DiagnosticBag()
    rebuilt = build_plan(recipe, bag, base_dir=base_dir)
    bag.raise_if_errors()
    if plan["resolved"].get("seed") is not None:
        rebuilt["resolved"]["seed"] = plan["resolved"]["seed"]
    return rebuilt


def launch(plan: dict, args: argparse.Namespace) -> int:
    """Start the worker processes on this machine and wait for them; returns their exit code."""
    world = world_of(plan, args)
    plan = prepare_plan(plan, Path(args.input), world)
    print(startup_statement(plan, world), flush=True)
    with tempfile.TemporaryDirectory(prefix="lorafile-ddp-") as tmp:
        plan_file = Path(tmp) / "plan.json"
        plan_file.write_text(json.dumps(plan, indent=1))
        env = {**os.environ, WORKER_ENV: "1"}
        if world.cpu:
            env["ACCELERATE_USE_CPU"] = "1"
        cmd = torchrun_command(world, plan_file, worker_args(args))
        return subprocess.call(cmd, env=env)


# --- inside a worker ---------------------------------------------------------------------------


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def worker_options(options: Any, plan: dict) -> Any:
    """Per-rank options: a device per local rank; ranks other than 0 show no progress bar
    (they write nothing either: Trainer.writes is rank 0 only)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = options.device
    if device is None:
        device = "cpu" if os.environ.get("ACCELERATE_USE_CPU") == "1" else _default_device(local)
    if rank() == 0:
        return replace(options, device=device)
    return replace(options, device=device, quiet=True)


def _default_device(local_rank: int) -> str:
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return "cpu"


def train(plan: dict, options: Any):
    """Train as one rank of a DDP run (see the module docstring)."""
    options = worker_options(options, plan)  # the launcher printed the startup statement
    trainer = distributed_trainer_class()(plan, options)
    return trainer.setup().train()


def distributed_trainer_class():
    """`runtime.train.Trainer` with micro-batches split across ranks and gradients averaged."""
    from lorafile.runtime.train import Trainer

    class DistributedTrainer(Trainer):
        def micro_batches(self, stream):
            """Every rank walks all `accumulate` x N micro-batches of the step and computes its
            share, so positions (for resume) and noise seeds match a single-process run."""
            n, r = world_size(), rank()
            for k in range(self.accumulate * n):
                epoch, index, batch = next(stream)
                if k % n == r:
                    yield epoch, index, batch
            self.position = (epoch, index + 1)  # the step's end, the same on every rank

        def reduce_guard(self, guard):
            """The NaN guard over all ranks (the earliest bad step on any rank), read at the
            same steps on every rank: one rank stopping alone would leave the others waiting
            at the next all-reduce."""
            return earliest_bad_step(guard)

        def rank_difference(self):
            """The largest difference between this rank's adapter and rank 0's, over ranks."""
            return adapter_difference(self.unet_params + self.te_params)

        def sync_gradients(self, params):
            """Average the gradients over the ranks: one flat all-reduce (DDP's buckets)."""
            average_gradients(params)

    return DistributedTrainer


def global_sum(values: list[float]) -> float:
    """The sum of `values` over all ranks (this rank's alone without a process group)."""
    import torch
    import torch.distributed as dist

    total = torch.tensor([sum(values)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            total = total.cuda()
        dist.all_reduce(total)
    return float(total[0])


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def earliest_bad_step(guard):
    """[first bad step, loss] of the NaN guard with the step reduced by MIN over the ranks
    (a rank's own loss value is kept: another rank's is reported as the rank's nan/inf)."""
    import torch
    import torch.distributed as dist

    if not _group_ready():
        return guard
    step = guard[:1].clone()
    dist.all_reduce(step, op=dist.ReduceOp.MIN)
    value = torch.where(step == guard[:1], guard[1:], torch.full_like(guard[1:], math.nan))
    return torch.cat([step, value])


def adapter_difference(params) -> float | None:
    """max |this rank's adapter - rank 0's| over all ranks (None with one process)."""
    import torch
    import torch.distributed as dist

    if not _group_ready():
        return None
    flat = torch._utils._flatten_dense_tensors([p.detach() for p in params])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    difference = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return float(difference[0])  # once, at the end of the run


def average_gradients(params) -> None:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)  # sum; gloo on CPU, NCCL on GPUs
    flat /= dist.get_world_size()
    for g, avg in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(avg)
