"""The training-loss curve: scalars read from the run's TensorBoard events, plotted to SVG.

The trainer logs `train/loss` at every step (runtime/train/logging.py). The plot shows the raw loss
and an exponential moving average (the loss of a diffusion model is noisy: each step draws its
own timesteps), with a vertical line at each evaluated checkpoint. matplotlib's Agg backend:
no display needed.
"""

from __future__ import annotations

from pathlib import Path

from lorafile.files import atomic_path

LOSS_TAG = "train/loss"
SMOOTHING = 0.9
"""EMA weight of the past: TensorBoard's default smoothing slider value is 0.6; diffusion
losses need more."""


def read_scalars(log_dir: Path, tag: str = LOSS_TAG) -> list[tuple[int, float]]:
    """(step, value) of `tag` in every event file under `log_dir`, by step (the last value
    written wins for a step logged twice, as after a resume). Empty when there is none."""
    if not log_dir or not Path(log_dir).is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for folder in sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep all
        events.Reload()
        if tag in events.Tags().get("scalars", []):
            for event in events.Scalars(tag):
                values[event.step] = event.value
    return sorted(values.items())


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing)."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def plot_loss(points: list[tuple[int, float]], marks: list[int], out: Path) -> Path | None:
    """Write the loss plot (SVG) with a line at each step in `marks`; None without points."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib.figure import Figure

    steps, losses = zip(*points, strict=True)
    figure = Figure(figsize=(7, 3), dpi=100)
    axes = figure.add_subplot()
    axes.plot(steps, losses, color="#9bb7d4", linewidth=0.8, label="loss")
    axes.plot(steps, smooth(list(losses)), color="#1f4e79", linewidth=1.6, label="smoothed")
    for step in marks:
        axes.axvline(step, color="#c05000", linewidth=0.8, linestyle="--")
    axes.set_xlabel("step")
    axes.set_ylabel(LOSS_TAG)
    axes.legend(loc="upper right", frameon=False)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="svg", metadata={"Date": None})  # no date: same run, same file
    return out
