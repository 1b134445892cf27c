"""What the user sees while training: the start-up budget line, a progress bar, TensorBoard.

TensorBoard scalars (under the plan's log folder): `train/loss`, `train/lr`, `train/grad_norm`,
`perf/images_per_s`, `memory/peak_gib` (CUDA peak allocated; on CPU the process's peak RSS).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def peak_memory_gib(device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, peak resident set size on CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def startup_line(plan: dict, images: int, reg_images: int, buckets: int, device) -> str:
    """The one-line budget printed before training (nanoGPT's "tokens per iteration")."""
    r, m = plan["resolved"], plan["memory"]
    est = m.get("vram_estimate_bytes")
    vram = f"VRAM estimate {est / 2**30:.1f} GiB" if est else "VRAM estimate n/a"
    reg = f" + {reg_images} regularization" if reg_images else ""
    return (
        f"lorafile: {images} images{reg} in {buckets} buckets, {r['steps']} steps "
        f"({r['steps_per_epoch']}/epoch), effective batch {r['effective_batch']}, "
        f"{r['adapter']['algo']} rank {r['adapter']['rank']}, {m['mixed_precision']} on {device}, {vram}"
    )


class RunLog:
    """Progress bar plus TensorBoard writer; `step()` once per optimizer step."""

    def __init__(self, log_dir: Path | None, total: int, start: int, device, quiet: bool = False):
        from tqdm.auto import tqdm

        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))
        self.bar = tqdm(
            total=total,
            initial=start,
            unit="step",
            disable=quiet,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.device = device
        self.last = time.perf_counter()

    def step(self, step: int, loss: float, lr: float, grad_norm: float | None, images: int) -> None:
        now = time.perf_counter()
        rate = images / max(now - self.last, 1e-9)
        self.last = now
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.bar.update(1)
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        if grad_norm is not None:
            self.writer.add_scalar("train/grad_norm", grad_norm, step)
        self.writer.add_scalar("perf/images_per_s", rate, step)
        self.writer.add_scalar("memory/peak_gib", peak_memory_gib(self.device), step)

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
