"""What the user sees while training: the start-up budget line, a progress bar, TensorBoard.

TensorBoard scalars (under the plan's log folder): `train/loss`, `train/lr`, `train/grad_norm`,
`perf/images_per_s`, `memory/peak_gib` (CUDA peak allocated; on CPU the process's peak RSS).
"""

from __future__ import annotations

import math
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
        f"{r['adapter']['algo']} rank {r['adapter']['rank']}, {precision_words(m['mixed_precision'])} "
        f"on {device}, {vram}"
    )


def precision_words(mixed: str) -> str:
    """accelerate's mixed_precision value as a person reads it (`no` means plain fp32)."""
    return {"no": "fp32 (mixed precision off)"}.get(mixed, f"{mixed} mixed precision")


class RunLog:
    """Progress bar plus TensorBoard writer: `advance()` once per optimizer step (no values,
    so no GPU sync), `report()` with the values of the steps since the last report."""

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
        self.last, self.images, self.closed = time.perf_counter(), 0, False

    def advance(self, images: int) -> None:
        """One optimizer step done (`images` trained in it)."""
        self.images += images
        self.bar.update(1)

    def report(self, rows: list[tuple[int, float, float, float]]) -> None:
        """(step, loss, lr, grad_norm) of each step since the last report; the throughput is
        the images of those steps over the time since the last report."""
        if not rows:
            return
        now = time.perf_counter()
        rate = self.images / max(now - self.last, 1e-9)
        self.last, self.images = now, 0
        step, loss, lr, _ = rows[-1]
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if self.writer is None:
            return
        for step, loss, lr, grad_norm in rows:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            if grad_norm == grad_norm:  # NaN: the accelerator returned no norm
                self.writer.add_scalar("train/grad_norm", grad_norm, step)
        self.writer.add_scalar("perf/images_per_s", rate, step)
        self.writer.add_scalar("memory/peak_gib", peak_memory_gib(self.device), step)

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class StepGuard:
    """The NaN guard without a host sync per step: a device tensor [first bad step, its loss]
    (inf while every loss was finite), updated with `torch.where` and read at `_flush`."""

    def __init__(self, device):
        import torch

        self.state = torch.tensor([math.inf, math.nan], device=device)  # once, before the loop

    def record(self, loss, step: int) -> None:
        import torch

        first = ~torch.isfinite(loss) & torch.isinf(self.state[0])  # bad, and none before
        here = torch.stack([torch.full((), float(step), device=loss.device), loss.float()])
        self.state = torch.where(first, here, self.state)
