"""The linear algebra shared by merge, combine and resize: a module's weight change as a
matrix, and its SVD computed from the low-rank factors.

Every adapter module is a change ΔW of one layer's weight, seen as a matrix [out, in·k·k]
(a conv kernel flattened the way `Conv2d.weight.flatten(1)` does):

* LoRA / LoCon: ΔW = (alpha / r) · up · down, up [out, r], down [r, in·k·k];
* LoHa: ΔW = (alpha / r) · (w1_a · w1_b) ⊙ (w2_a · w2_b) (LyCORIS `modules/loha.py`).

`factor_svd(up, down)` is the exact SVD of up · down without forming it: with QR factors
up = Q1·R1 and downᵀ = Q2·R2, up·down = Q1 (R1·R2ᵀ) Q2ᵀ, so the SVD of the small r×r matrix
R1·R2ᵀ gives the singular values and, through Q1 and Q2, the singular vectors. That costs
O((out + in)·r²) instead of an SVD of an out×in matrix (kohya's resize_lora.py forms the
dense matrix; the result is the same up to float rounding).

Energy: the retained energy of a rank-k truncation is Σ_{i<k} σᵢ² / Σ σᵢ², the share of the
squared Frobenius norm of ΔW that the truncation keeps (Eckart-Young: no rank-k matrix keeps
more). kohya's `--dynamic_method sv_fro --dynamic_param t` keeps the smallest k whose
Frobenius-norm ratio √(energy) reaches t, so `--energy e` equals `sv_fro` with t = √e;
`sv_ratio r` keeps the singular values with σᵢ ≥ σ₀ / r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lorafile.runtime.lorafiles.convert import AdapterModule, _cannot_write


def up_down(module: AdapterModule, dtype=None) -> tuple[Any, Any]:
    """A LoRA/LoCon module's (up [out, r], down [r, in·k·k]) as matrices, unscaled."""
    import torch

    dtype = dtype or torch.float64
    up = module.tensors["lora_up.weight"].to(dtype)
    down = module.tensors["lora_down.weight"].to(dtype)
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)


def cannot_factor(module: AdapterModule) -> str:
    """Why `delta_matrix` cannot give this module's ΔW ('' when it can): the converter's own
    reasons, and LoKr or DoRA, whose weight change is not up·down or a Hadamard product."""
    why = _cannot_write(module, "kohya")
    if why:
        return why
    if module.algo == "lokr":
        return "LoKr's Kronecker product is not merged or resized here"
    if "dora_scale" in module.tensors:
        return "DoRA's magnitude rescales the whole weight, not a low-rank change"
    if not all(_finite(t) for t in module.tensors.values()):
        return "it holds NaN or inf values, as a diverged training run writes"
    return ""


def _finite(tensor) -> bool:
    import torch

    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def refuse_unfactorable(modules: list[AdapterModule], bag, name: str, verb: str, help: str) -> bool:
    """One F720 naming the modules of `name` that cannot be `verb` (merged, resized); True if
    there were any."""
    bad = [(m, why) for m in modules if (why := cannot_factor(m))]
    if bad:
        names = ", ".join(f"`{m.source}` ({why})" for m, why in bad[:6])
        more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
        bag.error("F720", f"`{name}`: {len(bad)} module(s) cannot be {verb}: {names}{more}.", help)
    return bool(bad)


def delta_matrix(module: AdapterModule, dtype=None):
    """ΔW of a LoRA, LoCon or LoHa module as an [out, in·k·k] matrix, alpha/r applied."""
    import torch

    dtype = dtype or torch.float64
    scale = module.scale if module.scale is not None else 1.0
    if module.algo == "loha":
        t = {
            k: module.tensors[k].to(dtype)
            for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        }
        w1 = t["hada_w1_a"] @ t["hada_w1_b"].reshape(t["hada_w1_b"].shape[0], -1)
        w2 = t["hada_w2_a"] @ t["hada_w2_b"].reshape(t["hada_w2_b"].shape[0], -1)
        return w1 * w2 * scale
    up, down = up_down(module, dtype)
    return (up @ down) * scale


def factor_svd(up, down):
    """(U, S, Vh) of up @ down from its factors (see the module docstring); float64 in, out.

    U [out, r], S [r] descending, Vh [r, in]; U·diag(S)·Vh == up·down to float64 rounding."""
    import torch

    q1, r1 = torch.linalg.qr(up)
    q2, r2 = torch.linalg.qr(down.T)
    u_small, s, vh_small = torch.linalg.svd(r1 @ r2.T)
    return q1 @ u_small, s, vh_small @ q2.T


def dense_svd(matrix):
    """(U, S, Vh) of a dense matrix, reduced (for LoHa, whose ΔW has no low-rank factors)."""
    import torch

    return torch.linalg.svd(matrix, full_matrices=False)


def retained_energy(s, k: int) -> float:
    """Σ_{i<k} σᵢ² / Σ σᵢ² (1.0 for an all-zero module: nothing is lost)."""
    total = float((s**2).sum())
    return 1.0 if total == 0.0 else float((s[:k] ** 2).sum()) / total


def choose_rank(
    s, rank: int | None = None, energy: float | None = None, ratio: float | None = None
) -> int:
    """The kept rank: `rank` (capped by the module's own), else the smallest k keeping
    `energy` of Σσ², else the count of σᵢ ≥ σ₀/`ratio`; at least 1."""
    import torch

    available = int(s.shape[0])
    if rank is not None:
        return max(1, min(rank, available))
    if float(s[0]) == 0.0:
        return 1
    if energy is not None:
        share = torch.cumsum(s**2, 0) / float((s**2).sum())
        # Float rounding can leave the full sum a hair under 1.0: never ask past the end.
        return max(1, min(available, int((share < energy - 1e-12).sum()) + 1))
    assert ratio is not None
    return max(1, int((s >= float(s[0]) / ratio).sum()))


@dataclass
class Truncated:
    """A rank-k factorisation: up [out, k], down [k, in·k·k], and what it keeps."""

    up: Any
    down: Any
    rank: int
    energy: float


def truncate(u, s, vh, k: int) -> Truncated:
    """Keep the top k singular triplets, √σ on each side (balanced factors: neither side's
    magnitude dominates when cast to fp16/bf16)."""
    root = s[:k].sqrt()
    return Truncated(u[:, :k] * root, root[:, None] * vh[:k], k, retained_energy(s, k))


def kernel_of(module: AdapterModule) -> tuple[int, int, int] | None:
    """(in, kh, kw) of a conv module's down factor, None for a Linear. A LoHa stores its conv
    factors flattened, so the layer's kind comes from the SDXL module table there."""
    from lorafile.runtime.lorafiles.keys import sdxl_keymap

    down = module.tensors.get("lora_down.weight")
    if down is not None:
        return tuple(down.shape[1:]) if down.dim() == 4 else None
    layer = sdxl_keymap().modules.get((module.component, module.path))
    if layer is None or layer.kind == "linear":
        return None
    cols = module.tensors["hada_w1_b"].reshape(module.tensors["hada_w1_b"].shape[0], -1).shape[1]
    side = 3 if layer.kind == "conv3x3" else 1
    return (cols // (side * side), side, side)


def as_module_tensors(up, down, kernel, dtype=None) -> dict:
    """up/down matrices shaped as kohya stores them: Linear [out, r]/[r, in]; conv
    down [r, in, kh, kw] and up [out, r, 1, 1] (`kernel` from `kernel_of`)."""
    import torch

    dtype = dtype or torch.float32
    if kernel is not None:
        down = down.reshape(down.shape[0], *kernel)
        up = up.reshape(up.shape[0], up.shape[1], 1, 1)
    return {
        "lora_down.weight": down.to(dtype).contiguous(),
        "lora_up.weight": up.to(dtype).contiguous(),
    }


def frobenius(matrix) -> float:
    return math.sqrt(float((matrix.double() ** 2).sum()))
