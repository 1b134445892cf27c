"""GPU benchmark: full-size SDXL LoRA training steps, speed, FLOPs, MFU and peak memory.

    bench/gpu.sh                      # on a CUDA machine (H200): the full matrix below
    bench/gpu.sh --levers             # the speed levers one at a time, batch 1 and 4
    .venv/bin/python bench/gpu_train.py --dry-run   # CPU: tiny model, 1 step, same code

For each of batch {1, 4} x gradient checkpointing {on, off} at 1024², adamw8bit, bf16:
builds the SDXL base 1.0 UNet from the shipped config with random weights (no download;
random weights cost the same time and memory as real ones), attaches the recipe's LoRA with
lorafile's `runtime.adapters.attach` (rank 16, attention + ff), and runs `--steps` optimizer
steps of lorafile's denoising loss (`runtime.diffusion.denoising_loss`, the core of
Trainer.loss_step) on cached-style inputs (latents and text embeddings already on the device).

The trainer's CUDA settings are on in every case unless the lever sweep turns one off:
TF32 matmuls, cudnn.benchmark, channels_last UNet and latents, fused AdamW (with `adamw`).
`--levers` measures, at batch 1 with checkpointing and at batch 4 without: eager NCHW
(channels_last off), the trainer default (channels_last on), + torch.compile (dynamic=False;
its compile time is excluded by the warm-up and printed), + CUDA graphs (torch.compile mode
"reduce-overhead": each step replays one recorded graph), and torch AdamW fused instead of
adamw8bit. The dry run skips torch.compile (inductor on a CPU takes minutes: 224 s for the
tiny UNet's forward and backward, measured 2026-11-28).

Prints per configuration: s/step (median after `--warmup` steps), images/s, FLOPs per step
(counted once with torch.utils.flop_counter, recomputation included), achieved TFLOP/s and
MFU against the GPU's dense bf16 peak, torch.cuda.max_memory_allocated, the analytic lint
estimate (compiler/vram.py, allocated part and total) and the exact simulation
(runtime/memory/simulate.py) for the same settings.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}
"""Dense bf16 tensor-core peaks (datasheets; vram_perf.md §6). A measured 8192³ bf16 matmul
reaches about 790 TFLOP/s on an H200, printed as a second MFU column."""
MEASURED_MATMUL_TFLOPS = {"H200": 790.0}


@dataclass
class Case:
    batch: int
    checkpointing: bool
    size: int = 1024
    rank: int = 16
    optimizer: str = "adamw8bit"
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    """torch.compile's mode; "reduce-overhead" also replays each shape as a CUDA graph."""
    label: str = "default"
    kind: str = "lorafile"
    """lorafile (the eager step), peer (diffusers' example step), graphs (lorafile's
    static-buffer step captured per shape), regional / regional+graphs (per-block
    torch.compile with the trainer's `compile_unet`, without and with the captured step)."""


def main_cases(size: int, batches: list[int]) -> list[Case]:
    """The main matrix: batch x checkpointing, each as lorafile's eager step, the example's
    peer step and lorafile's captured step."""
    cases = []
    for b in batches:
        for gc in (True, False):
            cases += [
                Case(b, gc, size),
                Case(b, gc, size, kind="peer", label="peer"),
                Case(b, gc, size, kind="graphs", label="graphs"),
            ]
    return cases


def regional_cases(size: int, batches: list[int]) -> list[Case]:
    """Regional compilation, a separate invocation (`--regional`): compile time is printed."""
    return [
        Case(b, False, size, compile=True, kind=kind, label=kind)
        for b in batches
        for kind in ("regional", "regional+graphs")
    ]


def lever_cases(size: int, dry_run: bool, batches: list[int] | None = None) -> list[Case]:
    """Each speed lever on its own, at the two shapes the goals name (issue 7): batch 1 with
    checkpointing, batch 4 without (`batches` keeps only those shapes' batch sizes)."""
    cases = []
    for batch, gc in ((1, True), (4, False)):
        if batches and batch not in batches:
            continue
        base = {"batch": batch, "checkpointing": gc, "size": size}
        cases += [
            Case(**base, channels_last=False, label="NCHW"),
            Case(**base, label="default"),
            Case(**base, compile=True, label="+compile"),
            Case(**base, compile=True, compile_mode="reduce-overhead", label="+cudagraphs"),
            Case(**base, optimizer="adamw", label="fused adamw"),
        ]
    return [c for c in cases if not (dry_run and c.compile)]


def build_unet(device, dtype, tiny: bool):
    """The SDXL UNet (or the tiny one) with random weights, directly on the device."""
    import torch
    from diffusers import UNet2DConditionModel

    from lorafile.runtime.models import sdxl
    from lorafile.runtime.models import tiny as tiny_mod

    config = tiny_mod.tiny_configs()["unet"] if tiny else sdxl.sdxl_config("unet")
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    return unet.to(dtype)


def make_inputs(unet, case: Case, device, tiny: bool):
    """Cached-style inputs: latents, prompt embeds, pooled embeds and time ids on the device."""
    import torch

    size = 64 if tiny else case.size
    cross = unet.config.cross_attention_dim
    pooled = (
        unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    )
    g = torch.Generator("cpu").manual_seed(1)
    latents = torch.randn(case.batch, 4, size // 8, size // 8, generator=g).to(device)
    cond = {
        "embeds": torch.randn(case.batch, 77, cross, generator=g).to(device),
        "pooled": torch.randn(case.batch, pooled, generator=g).to(device),
        "time_ids": torch.tensor(
            [[size, size, 0, 0, size, size]] * case.batch, dtype=unet.dtype, device=device
        ),
    }
    return latents, cond


def setup_case(case: Case, device, tiny: bool):
    import torch
    from diffusers import DDPMScheduler

    from lorafile.runtime.models import sdxl
    from lorafile.runtime.train import adapters, optim

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    unet = build_unet(device, dtype, tiny)
    adapter = {"algo": "lora", "rank": case.rank, "alpha": float(case.rank), "conv_rank": case.rank,
               "conv_alpha": float(case.rank), "targets": ["attention", "ff"], "dropout": 0.0}  # fmt: skip
    params = adapters.attach(unet, adapter, unet=True)
    if case.checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    if case.channels_last and device.type == "cuda":
        unet.to(memory_format=torch.channels_last)  # as Trainer._speed_up
    if case.compile:
        from lorafile.runtime.train.diffusion import compile_unet

        compile_unet(unet, buckets=1, mode=case.compile_mode, scope="unet")  # the whole UNet
    opt = optim.build_optimizer(case.optimizer, [{"params": params, "lr": 1e-4}], {})
    sched = DDPMScheduler.from_config(sdxl.sdxl_config("scheduler"))
    return unet, params, opt, sched


def train_step(unet, params, opt, sched, latents, cond, step: int, autocast, channels_last,
               cuda_graphs: bool = False):  # fmt: skip
    """One optimizer step of lorafile's loss; no host synchronisation inside."""
    import torch

    from lorafile.runtime.train import diffusion

    if cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()  # as Trainer.loss_step
    generator = diffusion.step_generator(0, 0, step)
    with autocast():
        per_sample, _ = diffusion.denoising_loss(
            unet, sched, latents, cond, generator, channels_last=channels_last, dtype=unet.dtype
        )
    loss = per_sample.mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def count_flops(step_fn) -> int:
    """FLOPs of one step (forward, recomputation, backward) by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step_fn()
    return counter.get_total_flops()


def make_step(case: Case, device, tiny: bool):
    """(step(i), the optimizer, channels_last, what the case captured) for one case."""
    import contextlib

    import gpu_peer
    import torch

    from lorafile.runtime.train import diffusion

    if case.kind == "peer":
        unet = build_unet(device, torch.bfloat16 if device.type == "cuda" else torch.float32, tiny)
        latents, cond = make_inputs(unet, case, device, tiny)
        step, _, opt = gpu_peer.peer_step(unet, case, device, latents, cond)
        return step, opt, False, ""
    regional = case.kind.startswith("regional")
    plain = Case(**{**case.__dict__, "compile": case.compile and not regional})
    unet, params, opt, sched = setup_case(plain, device, tiny)
    latents, cond = make_inputs(unet, case, device, tiny)
    cl = case.channels_last and device.type == "cuda"
    how = ""
    if regional:  # the trainer's `--compile`: each repeated transformer block
        diffusion.compile_unet(unet, buckets=1, mode="default", scope="blocks")
        how = "compile_unet blocks"
    if case.kind in ("graphs", "regional+graphs"):
        step = gpu_peer.static_step(unet, params, opt, sched, latents, cond, device, cl, True)
        return step, opt, cl, how
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )
    graphs = case.compile and case.compile_mode in diffusion.CUDA_GRAPH_MODES
    graphs = graphs and device.type == "cuda"
    step = lambda i: train_step(unet, params, opt, sched, latents, cond, i, autocast, cl, graphs)  # noqa: E731
    return step, opt, cl, how


def run_case(case: Case, args, device) -> dict:
    import contextlib

    import torch

    tiny = args.dry_run
    step, opt, cl, how = make_step(case, device, tiny)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync()
    warmup_s = time.perf_counter() - t0  # includes torch.compile's compilation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(args.warmup + i)
        sync()  # timing only; the step itself never waits for the GPU
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    eager = torch.compiler.set_stance("force_eager") if case.compile else contextlib.nullcontext()
    static = getattr(step, "static", None)
    captured = bool(static and static.capture and any(s.graph for s in static.slots.values()))
    if static is not None:  # a replay runs no Python ops: count the maths on the eager step
        static.capture = False
        static.slots.clear()
    with eager:  # FLOPs are counted on the eager module: the same maths
        flops = count_flops(lambda: step(10_000))
    s_step = statistics.median(times)
    return {
        "label": case.label,
        "kind": case.kind,
        "captured": captured,
        "compiled": how,
        "compile": case.compile,
        "channels_last": cl,
        "optimizer": case.optimizer,
        "fused": bool(opt.defaults.get("fused")),
        "warmup_s": warmup_s,
        "batch": case.batch,
        "checkpointing": case.checkpointing,
        "size": 64 if tiny else case.size,
        "s_per_step": s_step,
        "images_per_s": case.batch / s_step,
        "tflop_per_step": flops / 1e12,
        "tflops": flops / s_step / 1e12,
        "max_memory_allocated": peak,
    }


def memory_models(case: Case) -> dict:
    """The analytic lint estimate and the exact simulation for the same settings."""
    from lorafile.compiler import vram
    from lorafile.runtime.memory import simulate as memsim
    from lorafile.spec.models import (
        Adapter,
        Base,
        Cache,
        Dataset,
        Output,
        Recipe,
        Resolution,
        Train,
    )

    recipe = Recipe(
        name="bench",
        base=Base(path="sdxl.safetensors"),
        datasets=(Dataset(path="data", resolution=Resolution(width=case.size, height=case.size)),),
        adapter=Adapter(rank=case.rank),
        train=Train(
            steps=20,
            batch=case.batch,
            checkpointing=case.checkpointing,
            optimizer=case.optimizer,
            precision="bf16",
            cache=Cache(latents=True, text=True),
        ),
        output=Output(path="out"),
    )
    est = vram.estimate(recipe)
    allocated = est.step_allocated
    sim = memsim.simulate(recipe)
    return {
        "lint_allocated": allocated,
        "lint_total": est.total_bytes,
        "simulated": sim.peak,
        "simulated_tflop_per_step": sim.total_flops / 1e12,  # counted on the meta device
    }


def gpu_name(device) -> str:
    import torch

    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return next((k for k in PEAK_BF16_TFLOPS if k.replace("RTX ", "") in name), name)


def peer_ratios(rows: list[dict]) -> list[str]:
    """lorafile's time per step over the peer's, per batch and checkpointing."""
    peer = {(r["batch"], r["checkpointing"]): r for r in rows if r["kind"] == "peer"}
    lines = []
    for r in rows:
        p = peer.get((r["batch"], r["checkpointing"]))
        if p and r["kind"] != "peer":
            lines.append(
                f"{r['label']} b{r['batch']} GC {'on' if r['checkpointing'] else 'off'}: "
                f"{r['s_per_step'] / p['s_per_step']:.2f}x the peer's time per step"
                + (" (captured)" if r.get("captured") else "")
            )
    return lines


def report(rows: list[dict], gpu: str) -> str:
    peak = PEAK_BF16_TFLOPS.get(gpu)
    measured = MEASURED_MATMUL_TFLOPS.get(gpu)
    gib = lambda n: f"{n / 2**30:6.2f}" if n else "   n/a"  # noqa: E731
    head = (f"{'case':<12} {'optimizer':<9} {'batch':>5} {'GC':>3} {'s/step':>7} {'img/s':>6} {'TFLOP/step':>10} {'TFLOP/s':>8} {'MFU':>6} "
            f"{'MFU790':>6} {'alloc GiB':>9} {'lint GiB':>8} {'sim GiB':>7} {'sim TFLOP':>9}")  # fmt: skip
    lines = [head]
    for r in rows:
        mfu = f"{r['tflops'] / peak:6.1%}" if peak else "   n/a"
        mfu2 = f"{r['tflops'] / measured:6.1%}" if measured else "   n/a"
        optimizer = r["optimizer"] + (" F" if r["fused"] else "")
        lines.append(
            f"{r['label']:<12} {optimizer:<9} "
            f"{r['batch']:>5} {'on' if r['checkpointing'] else 'off':>3} {r['s_per_step']:7.3f} "
            f"{r['images_per_s']:6.2f} {r['tflop_per_step']:10.2f} {r['tflops']:8.1f} {mfu} {mfu2} "
            f"{gib(r['max_memory_allocated']):>9} {gib(r.get('lint_allocated')):>8} {gib(r.get('simulated')):>7} "
            f"{r.get('simulated_tflop_per_step', math.nan):9.2f}"
        )
    lines += peer_ratios(rows)
    lines.append(
        "F: fused AdamW. Warm-up seconds (torch.compile's compile time): "
        + ", ".join(f"{r['label']} b{r['batch']} {r['warmup_s']:.1f}" for r in rows if r["compile"])
        if any(r["compile"] for r in rows)
        else "F: fused AdamW."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", help="comma-separated batch sizes (default 1,4; dry run 1,2)")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny model, 1 step: checks the script runs"
    )
    p.add_argument(
        "--no-sim", action="store_true", help="skip the exact simulation (CPU, ~20 s per case)"
    )
    p.add_argument(
        "--levers",
        action="store_true",
        help="measure the speed levers one at a time (channels_last, compile, CUDA graphs, fused "
        "AdamW)",
    )
    p.add_argument(
        "--regional",
        action="store_true",
        help="regional compilation (each repeated block), without and with the captured step; "
        "a separate invocation: compiling takes its own minutes",
    )
    p.add_argument(
        "--lorafile-only", action="store_true", help="the main matrix without peer and graphs"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--budget-s",
        type=float,
        help="start no new case after this many seconds: the device tool allows 600 s per call, "
        "and the cases finished by then are still reported",
    )
    args = p.parse_args(argv)
    if args.dry_run:
        default = None if args.levers else "1,2"
        args.steps, args.warmup, args.batches = 1, 0, args.batches or default
    return args


def pick_device(args: argparse.Namespace):
    """The CPU for a dry run, else the GPU with the trainer's CUDA settings."""
    import torch

    if args.dry_run:
        torch.set_num_threads(1)  # shared CPUs: waiting OpenMP threads only add noise
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device; use --dry-run on a CPU machine")
    torch.backends.cuda.matmul.allow_tf32 = True  # as Trainer._speed_up
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda")


def choose_cases(args: argparse.Namespace) -> list[Case]:
    if args.levers:
        chosen = [int(b) for b in args.batches.split(",")] if args.batches else None
        return lever_cases(args.size, args.dry_run, chosen)
    batches = [int(b) for b in (args.batches or "1,4").split(",")]
    if args.regional:
        return regional_cases(args.size, batches)
    if args.lorafile_only:
        return [Case(b, gc, args.size) for b in batches for gc in (True, False)]
    return main_cases(args.size, batches)


def run_cases(cases: list[Case], args: argparse.Namespace, device) -> list[dict]:
    """Each case in turn, its row printed as it finishes; a failing case (e.g. a compile) is
    reported and skipped, and no case starts once the time budget is spent."""
    import torch

    rows, started = [], time.perf_counter()
    for n, case in enumerate(cases):
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: {len(cases) - n} case(s) not run: "
                  + ", ".join(f"{c.label} b{c.batch}" for c in cases[n:]), flush=True)  # fmt: skip
            break
        try:
            row = run_case(case, args, device)
        except Exception as err:  # one lever failing (e.g. compile) must not lose the others
            print(f"{case.label} batch {case.batch}: failed: {err!r}", flush=True)
            continue
        if not args.no_sim and not args.dry_run and case.kind == "lorafile":
            row.update(memory_models(case))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args)
    rows = run_cases(choose_cases(args), args, device)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    gpu = gpu_name(device)
    mode = (
        "dry run: tiny model on CPU, figures are not GPU figures"
        if args.dry_run
        else f"SDXL {args.size}², bf16, adamw8bit, LoRA r16"
    )
    print(
        f"bench/gpu_train.py ({stamp}, {gpu}, {mode}, {args.steps} steps after {args.warmup} warm-up)"
    )
    print(report(rows, gpu))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
