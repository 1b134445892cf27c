"""An exponential moving average (EMA) of the adapter weights (recipe `ema decay D`).

The average is an fp32 shadow of every trainable adapter tensor, updated after each optimizer
step. The decay follows SimpleTuner's `use_ema` (`helpers/training/ema.py`, `EMAModel.get_decay`
without `use_ema_warmup`), so that the same recipe averages alike in both trainers: at the k-th
update (k = 1, 2, ...)

    d_k = 0                                  for k = 1 (the shadow starts as the weights)
    d_k = min(D, (1 + j) / (10 + j)),  j = k - 1   otherwise
    shadow = d_k * shadow + (1 - d_k) * weight

so early updates follow the weights closely and the decay rises towards D (0.9 after about
80 updates, 0.99 after about 890). SimpleTuner passes its global step as the update count;
which of its steps counts as the first was not checked against a run, so its ramp may sit one
update earlier or later (the plateau at D is the same). The shadow and its update count are saved in every checkpoint, so a
resumed run continues the same average bit for bit. `applied()` swaps the shadow into the
live adapter for exporting the `NAME-ema.safetensors` file, then puts the trained weights back.
"""

from __future__ import annotations

import contextlib


def ema_decay(decay: float, update: int) -> float:
    """The decay of the `update`-th update (1-based): 0 first, then min(D, (1+j)/(10+j))."""
    j = update - 1
    if j <= 0:
        return 0.0
    return min(decay, (1 + j) / (10 + j))


class AdapterEma:
    """The fp32 shadow of `params` (the trainable adapter tensors, in a fixed order)."""

    def __init__(self, params: list, decay: float):
        self.params, self.decay, self.updates = list(params), float(decay), 0
        self.shadow = [p.detach().float().clone() for p in self.params]

    def update(self) -> None:
        """Fold the current weights into the average (after `optimizer.step()`)."""
        import torch

        self.updates += 1
        d = ema_decay(self.decay, self.updates)
        with torch.no_grad():
            # lerp_: shadow + (1 - d) * (w - shadow) = d * shadow + (1 - d) * w, one kernel.
            weights = [p.detach().float() for p in self.params]
            torch._foreach_lerp_(self.shadow, weights, 1.0 - d)

    def state_dict(self) -> dict:
        """What a checkpoint keeps (tensors and an int: loadable with weights_only)."""
        return {"updates": self.updates, "shadow": [s.detach().cpu().clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow):
            raise RuntimeError(
                f"The checkpoint's EMA holds {len(shadow)} tensors, the adapter {len(self.shadow)}."
            )
        self.updates = int(state["updates"])
        for mine, saved in zip(self.shadow, shadow, strict=True):
            mine.copy_(saved)

    @contextlib.contextmanager
    def applied(self):
        """The live adapter holds the average inside the block, its trained weights after."""
        import torch

        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, s in zip(self.params, self.shadow, strict=True):
                    p.copy_(s)
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)


def ema_path(path):
    """`NAME.safetensors` -> `NAME-ema.safetensors` (beside it)."""
    return path.with_name(f"{path.stem}-ema{path.suffix}")


def make_ema(settings: dict | None, params: list) -> AdapterEma | None:
    """The average the plan asks for (`resolved.ema`), or None without an `ema` statement."""
    return AdapterEma(params, settings["decay"]) if settings else None
