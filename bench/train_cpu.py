"""CPU benchmark of the native trainer on the tiny SDXL-shaped model: steps/s and peak RSS.

    .venv/bin/python bench/train_cpu.py [--steps 20] [--repeat 1] [--only NAME,NAME] [--json]
    .venv/bin/python bench/train_cpu.py --profile "all off"   # where a step's time goes
    .venv/bin/python bench/train_cpu.py --diff 20,80          # the goal: defaults vs peer
    .venv/bin/python bench/train_cpu.py --diff 20,80 --example PATH/train_text_to_image_lora_sdxl.py
                                                  # ... and vs diffusers' example itself

Each configuration runs in its own process (peak RSS is per process) on the same synthetic
dataset, and the table's ratios come from this one run:

  defaults            `lorafile train` at its defaults: checkpointing and caches `auto`
                      (on a CPU: checkpointing off, latents and text cached), adamw8bit,
                      graphs on (the static-buffer step), fp32 (CPU)
  defaults adamw       the same with `optimizer adamw` (torch's fused AdamW, the example's
                      optimizer) instead of bitsandbytes' 8-bit AdamW
  defaults compile    `lorafile train --compile` (the repeated transformer blocks compiled;
                      an empty inductor cache per run, so the compile cancels in `--diff`)
  defaults adamw compile   both of the above
  defaults adamw compile unet   the same with `--compile-scope unet` (the whole UNet)
  defaults peft layers   the defaults with peft's own LoRA linears instead of the trainer's
                      fused ones (runtime/train/fused_lora.py), to measure what fusing saves
  lorafile            latents and text cached, checkpointing on, adamw8bit, fp32 (CPU)
  -cache latents      the VAE encodes every step
  -cache text         both text encoders run every step
  -checkpointing      activations kept instead of recomputed
  adamw               torch AdamW instead of bitsandbytes' 8-bit AdamW
  all off             no caching, no checkpointing, torch AdamW: the trainer's own loop
                      against the reference's with the same work per step
  reference           a straightforward loop written the way diffusers'
                      train_text_to_image_lora_sdxl.py does it: the image decoded, the VAE
                      encoding and both text encoders run every step, torch AdamW, no
                      checkpointing (LoRA on the same modules as lorafile, for a fair count)
  peer                the same loop with the example's own LoRA modules (to_q/k/v/out.0):
                      what `--diff` compares the defaults with
  example             (`--example SCRIPT`, with `--diff`) diffusers' train_text_to_image_lora_sdxl.py
                      itself, unmodified, at its defaults (fp32, torch AdamW, rank 4, no
                      checkpointing), in its own process (bench/diffusers_example.py)

Measured: steps/s over the training loop (after set-up and caching), and the process's peak
resident memory (ru_maxrss, which includes Python, torch and the model). One torch thread
per process. `--repeat N` runs every configuration N times, interleaved, and keeps each one's
fastest run (the least disturbed by other work on a shared machine).

"ms/step over ref" is a configuration's step time minus the reference loop's: for "all off",
which does the reference's work per step, it is the trainer loop's own overhead.
`--profile NAME` runs one configuration under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import children  # noqa: E402

CONFIGS = {
    "defaults": {"defaults": True},
    "defaults adamw": {"defaults": True, "optimizer": "adamw"},
    "defaults compile": {"defaults": True, "compile": "blocks"},
    "defaults adamw compile": {"defaults": True, "optimizer": "adamw", "compile": "blocks"},
    "defaults adamw compile unet": {"defaults": True, "optimizer": "adamw", "compile": "unet"},
    "defaults peft layers": {"defaults": True, "fused": False},
    "lorafile": {},
    "-cache latents": {"cache_latents": False},
    "-cache text": {"cache_text": False},
    "-checkpointing": {"checkpointing": False},
    "adamw": {"optimizer": "adamw"},
    "all off": {
        "cache_latents": False,
        "cache_text": False,
        "checkpointing": False,
        "optimizer": "adamw",
    },
    "reference": None,
    "peer": None,
}
PEERS = {"reference": ("attention", "ff"), "peer": ("attention",)}
"""The reference loop adapts lorafile's modules (the loop's cost alone); the peer adapts what
diffusers' example adapts (to_q/k/v/out.0 via `targets attention`), as the example script does."""
RANK = 4


def _recipe_settings(change: dict) -> dict:
    from lorafile.spec.models import Cache

    if change.get("defaults"):
        # `lorafile train` at its defaults: checkpointing and caches `auto`, adamw8bit, graphs
        # on; fp32 as the example script's default (`--mixed_precision no`) on a CPU.
        return {"cache": Cache(), "checkpointing": "auto",
                "optimizer": change.get("optimizer", "adamw8bit"), "precision": "no"}  # fmt: skip
    latents = change.get("cache_latents", True)
    text = change.get("cache_text", True)
    return {
        "cache": Cache(latents=latents, text=text),
        "checkpointing": change.get("checkpointing", True),
        "optimizer": change.get("optimizer", "adamw8bit"),
        "precision": "no",
    }


def run_lorafile(work: Path, change: dict, steps: int) -> dict:
    """One run of the native trainer (runtime/train/loop.py) for `steps` steps."""
    import tiny_run

    from lorafile.runtime.train.loop import Trainer, TrainOptions

    if change.get("fused") is False:  # this child process only: attach keeps peft's layers
        from lorafile.runtime.train import fused_lora

        fused_lora.fuse = lambda model: 0
    settings = _recipe_settings(change)
    recipe = tiny_run.tiny_recipe(
        work / "model.safetensors", work / "data", work / "out", steps=steps, **settings
    )
    plan = tiny_run.tiny_plan(recipe, work)
    opts = TrainOptions(out=work / f"out-{os.getpid()}", device="cpu", quiet=True, force=True,
                        compile=bool(change.get("compile")),
                        compile_scope=change.get("compile", "blocks"))  # fmt: skip
    trainer = Trainer(plan, opts).setup()
    cpu = time.process_time()
    result = trainer.train()
    return {"steps": steps, "seconds": result.seconds, "cpu_seconds": time.process_time() - cpu}


def run_reference(work: Path, steps: int, targets=("attention", "ff")) -> dict:
    """diffusers' example-script loop: everything encoded every step, nothing cached."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from PIL import Image

    from lorafile.runtime.models.sdxl import load_sdxl
    from lorafile.runtime.train.adapters import peft_config

    torch.manual_seed(0)
    m = load_sdxl(work / "model.safetensors")
    for module in (m.vae, m.text_encoder, m.text_encoder_2, m.unet):
        module.requires_grad_(False)
    # The same LoRA modules as lorafile (runtime/train/adapters.py) so that the comparison measures
    # the loop, not the adapter size; the script itself adapts to_q/k/v/out.0 only.
    adapter = {"algo": "lora", "rank": RANK, "alpha": RANK, "conv_rank": RANK, "conv_alpha": RANK,
               "targets": list(targets), "dropout": 0.0}  # fmt: skip
    m.unet.add_adapter(peft_config(adapter, unet=True))
    params = [p for p in m.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = DDPMScheduler.from_config(m.scheduler.config)
    images = sorted((work / "data").glob("*.png"))
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        path = images[step % len(images)]
        pixels = torch.from_numpy(__import__("numpy").asarray(Image.open(path).convert("RGB")))
        pixels = (pixels.permute(2, 0, 1).float() / 127.5 - 1)[None]
        caption = path.with_suffix(".txt").read_text().strip()
        with torch.no_grad():
            latents = m.vae.encode(pixels).latent_dist.sample() * m.vae.config.scaling_factor
            embeds, pooled = _encode_prompt(m, caption)
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,))
        noisy = sched.add_noise(latents, noise, t)
        time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]], dtype=torch.float32)
        pred = m.unet(
            noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
        ).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
    return {
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }


def _encode_prompt(m, caption: str):
    """The script's encode_prompt: penultimate hidden states of both encoders, pooled of te2."""
    import torch

    states, pooled = [], None
    for tok, enc in ((m.tokenizer, m.text_encoder), (m.tokenizer_2, m.text_encoder_2)):
        ids = tok(
            [caption],
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = enc(ids, output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def child(name: str, work: Path, steps: int, profile: bool = False) -> None:
    """Run one configuration in this process and print one JSON line."""
    import torch

    # One thread: on a shared machine, OpenMP threads waiting for each other made step times
    # swing tenfold; single-threaded runs give stable ratios.
    torch.set_num_threads(1)
    change = CONFIGS[name]
    run = (
        (lambda: run_reference(work, steps, PEERS[name]))
        if change is None
        else (lambda: run_lorafile(work, change, steps))
    )
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        out = profiler.runcall(run)
        stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(40)
    else:
        out = run()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["steps_per_s"] = out["steps"] / out["seconds"]
    children.print_row({"name": name, **out})


def prepare(work: Path) -> None:
    import tiny_run

    tiny_run.save_tiny_model(work / "model.safetensors")
    tiny_run.make_dataset(work / "data", count=8)


def measure(names: list[str], steps: int, work: Path, repeat: int = 1) -> list[dict]:
    """Each configuration `repeat` times, interleaved; the fastest run of each is kept."""
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for row in (run_child(name, steps, work) for name in names):
            if row["name"] not in best or row["steps_per_s"] > best[row["name"]]["steps_per_s"]:
                best[row["name"]] = row
    return [best[name] for name in names]


def run_child(name: str, steps: int, work: Path) -> dict:
    """One configuration for `steps` steps in its own process: its BENCH row."""
    # `--child=`: names such as -checkpointing start with a dash
    args = [__file__, f"--child={name}", "--work", str(work), "--steps", str(steps)]
    return children.run_child(args, name)


def per_step(
    names: list[str], short: int, long: int, work: Path, repeat: int, example: Path | None = None
) -> list[dict]:
    """Seconds per step by difference: (time of `long` steps - time of `short`) / (long - short).

    Whatever a run pays once (start-up, the first step's allocations) cancels out. The time is
    the process's CPU time (one thread): on a shared machine, other processes' load counts
    less; wall-clock figures are kept in the rows too. Each round runs every configuration's
    short and long run back to back (so both see the same load), the example too; of `repeat`
    rounds each configuration keeps its smallest difference (the least disturbed)."""
    runners = {name: (lambda n, name=name: run_child(name, n, work)) for name in names}
    if example is not None:
        import diffusers_example

        diffusers_example.prepare(work)
        runners["example"] = lambda n: diffusers_example.run(example, work, n, RANK)
    best: dict[str, dict] = {}
    for _ in range(max(repeat, 1)):
        for name, run in runners.items():
            row = _difference(name, run(short), run(long), short, long)
            if name not in best or row["s_per_step"] < best[name]["s_per_step"]:
                best[name] = row
    return list(best.values())


def _difference(name: str, a: dict, b: dict, short: int, long: int) -> dict:
    return {"name": name, "s_per_step": (b["cpu_seconds"] - a["cpu_seconds"]) / (long - short),
            "wall_s_per_step": (b["seconds"] - a["seconds"]) / (long - short),
            "seconds": [a["seconds"], b["seconds"]], "steps": [short, long],
            "peak_rss_mib": b.get("peak_rss_mib")}  # fmt: skip


def difference_table(rows: list[dict]) -> str:
    by = {r["name"]: r for r in rows}
    peer, example = by.get("peer"), by.get("example")
    width = max([len("configuration")] + [len(r["name"]) for r in rows])
    lines = [
        f"{'configuration':<{width}} {'CPU s/step':>10} {'vs peer':>8} {'vs example':>10} "
        f"{'wall s/step':>12}"
    ]
    for r in rows:
        vs_peer = f"{r['s_per_step'] / peer['s_per_step']:.2f}x" if peer else "-"
        vs_example = f"{r['s_per_step'] / example['s_per_step']:.2f}x" if example else "-"
        lines.append(
            f"{r['name']:<{width}} {r['s_per_step']:10.4f} {vs_peer:>8} {vs_example:>10} "
            f"{r['wall_s_per_step']:12.4f}"
        )
    for name, other in (("peer", peer), ("diffusers example", example)):
        if other and "defaults" in by:
            ratio = by["defaults"]["s_per_step"] / other["s_per_step"]
            lines.append(
                f"lorafile at its defaults takes {ratio:.2f}x the {name}'s time per step "
                "(goal <= 0.45x the example)"
            )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    by = {r["name"]: r for r in rows}
    ref, base = by.get("reference"), by.get("lorafile")
    lines = [
        f"{'configuration':<16} {'steps/s':>8} {'ms/step':>8} {'peak RSS':>10} {'vs reference':>13} "
        f"{'vs lorafile':>12} {'ms/step over ref':>17}"
    ]
    for r in rows:
        vs_ref = f"{r['steps_per_s'] / ref['steps_per_s']:.2f}x" if ref else "-"
        vs_base = f"{r['steps_per_s'] / base['steps_per_s']:.2f}x" if base else "-"
        over = f"{1000 / r['steps_per_s'] - 1000 / ref['steps_per_s']:+.1f}" if ref else "-"
        lines.append(
            f"{r['name']:<16} {r['steps_per_s']:8.2f} {1000 / r['steps_per_s']:8.1f} "
            f"{r['peak_rss_mib']:6.0f} MiB {vs_ref:>13} {vs_base:>12} {over:>17}"
        )
    if ref and base:
        lines.append(
            f"lorafile is {base['steps_per_s'] / ref['steps_per_s']:.2f}x the reference loop's speed, "
            f"at {base['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x its peak RSS"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="training steps per configuration")
    p.add_argument("--only", help="comma-separated configuration names (default: all)")
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per configuration; the fastest is kept"
    )
    p.add_argument("--profile", metavar="NAME", help="cProfile one configuration (to stderr)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    p.add_argument(
        "--diff",
        metavar="A,B",
        help="seconds per step by the difference of A- and B-step runs (e.g. 20,80) instead "
        "of steps/s over one run; default configurations: defaults,peer",
    )
    p.add_argument(
        "--example",
        type=Path,
        metavar="SCRIPT",
        help="with --diff: also run diffusers' examples/text_to_image/"
        "train_text_to_image_lora_sdxl.py (a path to it in a diffusers checkout), unmodified",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.work, args.steps, profile=args.profile == args.child)
        return 0
    if args.example and not (args.diff and args.example.is_file()):
        p.error("--example needs --diff and the path of train_text_to_image_lora_sdxl.py")
    if args.profile:
        if args.profile not in CONFIGS:
            p.error(f"unknown configuration {args.profile!r}; choose from {', '.join(CONFIGS)}")
        with tempfile.TemporaryDirectory(prefix="lorafile-bench-") as tmp:
            prepare(Path(tmp))
            torch_threads = {**os.environ, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, __file__, f"--child={args.profile}", f"--profile={args.profile}",
                   "--work", tmp, "--steps", str(args.steps)]  # fmt: skip
            return subprocess.call(cmd, env=torch_threads)
    default = ["defaults", "peer"] if args.diff else list(CONFIGS)
    names = args.only.split(",") if args.only else default
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    with tempfile.TemporaryDirectory(prefix="lorafile-bench-") as tmp:
        work = Path(tmp)
        prepare(work)
        if args.diff:
            short, long = (int(n) for n in args.diff.split(","))
            rows = per_step(names, short, long, work, args.repeat, args.example)
        else:
            rows = measure(names, args.steps, work, max(args.repeat, 1))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.diff:
        print(f"bench/train_cpu.py --diff {args.diff} --repeat {args.repeat}  ({stamp}, "
              f"{os.cpu_count()} CPUs, tiny model, 64 px, rank {RANK}, 1 thread)")  # fmt: skip
        print(difference_table(rows))
        if args.json:
            print(json.dumps(rows))
        return 0
    print(
        f"bench/train_cpu.py --steps {args.steps} --repeat {args.repeat}  ({stamp}, {os.cpu_count()} CPUs, tiny model, 64 px, rank {RANK})"
    )
    print(table(rows))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
