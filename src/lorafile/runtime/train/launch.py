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

Ctrl-C or SIGTERM: the launcher passes the signal on to torchrun (started in its own session,
so a terminal's Ctrl-C reaches each worker once), torchrun to each worker; the workers agree on
the step to stop at within `log_every` steps (`agreed_signal`), rank 0 writes the checkpoint, and
the launcher prints the command that resumes the run (runtime/train/interrupt.py).

Effective batch = batch x accumulate x processes. The learning rate is NOT scaled with the
number of processes: each optimizer step averages over more images, so the same lr takes steps
of the same size with less noise. Scale it yourself if you follow the linear-scaling rule.
"""

from __future__ import annotations

import argparse
import contextlib
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

from lorafile.files import real_path
from lorafile.runtime.train.defaults import DEFAULT_LOG_EVERY
from lorafile.runtime.train.interrupt import StopRequest

WORKER_ENV = "LORAFILE_DDP_WORKER"
"""Set by the launcher for the processes it starts: they train instead of launching again."""
"""Steps between the trainer's host synchronisations unless `--log-every` says otherwise."""
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
"""Seconds torchrun waits for the workers after passing a signal on, before SIGKILL."""


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
        out += ["-o", str(real_path(args.output))]
    if args.resume:
        out += ["--resume"] + ([] if args.resume is True else [str(args.resume)])
    for flag in ("force", "allow_pickle", "quiet", "cpu", "compile"):
        if getattr(args, flag, False):
            out.append("--" + flag.replace("_", "-"))
    if getattr(args, "format", None):
        out += ["--format", args.format]
    if getattr(args, "compile_mode", None):
        out += ["--compile-mode", args.compile_mode]
    if getattr(args, "compile_scope", None):
        out += ["--compile-scope", args.compile_scope]
    if getattr(args, "graphs", None):
        out += ["--graphs", args.graphs]
    if getattr(args, "log_every", None):
        out += ["--log-every", str(args.log_every)]
    return out


def prepare_plan(plan: dict, input_path: Path, world: World) -> dict:
    """The plan every process trains: built for this many processes (steps per epoch and the
    effective batch depend on it) and with the seed fixed (all ranks must draw the same)."""
    base_dir = Path(plan.get("base_dir") or real_path(input_path).parent)
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
    from lorafile.runtime.train.plan import build_plan, recipe_of

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
        # torchrun SIGKILLs workers this long after passing a signal on (its default, 30 s, may
        # not cover `log_every` steps plus a checkpoint); a second signal ends the wait.
        env.setdefault(SHUTDOWN_TIMEOUT_ENV, "600")
        cmd = torchrun_command(world, plan_file, worker_args(args))
        code, signum = run_forwarding_signals(cmd, env)
    if signum:
        out = Path(getattr(args, "output", None) or plan["resolved"]["output"]["path"])
        print(stopped_sentence(out, resume_command(args)), file=sys.stderr)
        return 128 + signum
    return code


def stopped_sentence(out: Path, command: str) -> str:
    """What the launcher says after the workers stopped on a signal (rank 0 said where)."""
    from lorafile.runtime.train.checkpoint import latest_checkpoint
    from lorafile.runtime.train.run_state import RUN_FILE, read_run_file

    run = read_run_file(out / RUN_FILE)
    # interrupted: the checkpoint of the last step; aborted at once: the last one saved
    last = run.get("checkpoint") if run.get("status") == "interrupted" else None
    last = last or latest_checkpoint(out)
    if last:
        return f"To continue from the checkpoint {last}, run: {command}"
    return (
        "The run stopped before its first checkpoint; nothing was trained. To start over, "
        "run the same command with --force."
    )


def run_forwarding_signals(cmd: list[str], env: dict) -> tuple[int, int]:
    """Run torchrun in its own session and pass each SIGINT/SIGTERM this process gets on to it:
    a Ctrl-C reaches the workers once, through torchrun (which sends it to each worker and
    waits for them), never twice (the terminal's and torchrun's). A second signal makes
    torchrun stop waiting and SIGTERM the workers: they abort at once. Returns torchrun's exit
    code and the first signal (0: none)."""
    process = subprocess.Popen(cmd, env=env, start_new_session=True)
    with Forwarder(process) as forwarder:
        return process.wait(), forwarder.signum or 0


class Forwarder(StopRequest):
    """SIGINT/SIGTERM handlers that send every signal on to a child process."""

    def __init__(self, process: subprocess.Popen):
        super().__init__(
            "lorafile: passing the signal on to the training processes: they stop within "
            "`log_every` steps and save a checkpoint; send it again to abort at once."
        )
        self.process = process

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            os.write(2, f"\n{self.notice}\n".encode())
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


def resume_command(args: argparse.Namespace) -> str:
    """The `lorafile train` command that continues an interrupted run exactly: the same input
    and options with `--resume` (not --force: a resume keeps the outputs), and the same
    launch options."""
    import shlex

    default_log = getattr(args, "log_every", None) == DEFAULT_LOG_EVERY  # not worth repeating
    again = argparse.Namespace(
        **{
            **vars(args),
            "resume": True,
            "force": False,
            "log_every": None if default_log else args.log_every,
        }
    )
    words = ["lorafile", "train", str(args.input), *worker_args(again)]
    for name in ("gpus", "machines", "machine_rank", "main_address", "main_port"):
        value = getattr(args, name, None)
        if value:
            words += ["--" + name.replace("_", "-"), str(value)]
    return shlex.join(words)


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
    return trainer(plan, options).setup().train()


def trainer(plan: dict, options: Any):
    """This rank's trainer, not set up yet (the CLI sets it up and trains in two steps)."""
    options = worker_options(options, plan)  # the launcher printed the startup statement
    return distributed_trainer_class()(plan, options)


def distributed_trainer_class():
    """`runtime.train.Trainer` with micro-batches split across ranks and gradients averaged."""
    from lorafile.runtime.train.loop import Trainer

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

        def stop_signal(self, flush_point):
            """A signal on any rank stops every rank, at the same step: the flag is reduced
            where the loop reads back from the device anyway (once per `log_every` steps)."""
            return agreed_signal(self.stop.signum or 0) if flush_point else 0

    return DistributedTrainer


def agreed_signal(signum: int) -> int:
    """The largest of the ranks' signal numbers (0: no rank was signalled); every rank must
    call it at the same step. One small all-reduce: on NCCL its read-back is a host sync,
    which is why the trainer calls it only at flush points."""
    import torch
    import torch.distributed as dist

    if not _group_ready():
        return signum
    flag = torch.tensor([signum], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag[0])


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
