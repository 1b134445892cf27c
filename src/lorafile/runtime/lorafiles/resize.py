"""`lorafile resize`: shrink a LoRA's ranks by SVD, module by module (kohya's resize_lora.py).

Each LoRA/LoCon module's up·down is factorised exactly (`lowrank.factor_svd`) and truncated to
a rank chosen by one criterion: `--rank N` (every module at most N), `--energy e` (the smallest
rank keeping the share e of Σσ², kohya's `sv_fro` with t = √e) or `--ratio r` (σᵢ ≥ σ₀/r,
kohya's `sv_ratio`). The kept factors are √σ-balanced and the alpha is rescaled with the rank,
alpha' = alpha · k / r, so the effective scale alpha/rank, and with it the weight change, is
unchanged up to the truncation (at full rank the file is equivalent to its input).

LoHa modules have no low-rank factors to cut: they are refused (F724) unless `dense_fallback`,
which forms ΔW, truncates its SVD and writes a plain LoRA of that rank (alpha = rank). LoKr,
OFT, DoRA and keys matching no SDXL layer are refused (F720).

Diagnostic codes: F720 module that cannot be resized, F724 LoHa without the dense fallback,
F725 a missing or out-of-range criterion; F713 output overwrites the input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag, fail
from lorafile.runtime.lorafiles import lowrank
from lorafile.runtime.lorafiles.convert import (
    AdapterModule,
    fill_alphas,
    read_lora,
    write_lora,
)
from lorafile.runtime.lorafiles.merge import check_outputs


@dataclass(frozen=True)
class Criterion:
    """Exactly one of rank, energy, ratio."""

    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None

    def check(self) -> Criterion:
        given = [x for x in (self.rank, self.energy, self.ratio) if x is not None]
        if len(given) != 1:
            raise fail(
                "F725",
                "Give exactly one of --rank, --energy, --ratio.",
                "For example --rank 8, or --energy 0.9 to keep 90% of each module's energy.",
            )
        bad = (
            (self.rank is not None and self.rank < 1)
            or (self.energy is not None and not 0 < self.energy <= 1)
            or (self.ratio is not None and self.ratio < 1)
        )
        if bad:
            raise fail(
                "F725",
                f"{self.describe()} is out of range.",
                "--rank is at least 1, --energy in (0, 1], --ratio at least 1.",
            )
        return self

    def describe(self) -> str:
        if self.rank is not None:
            return f"--rank {self.rank}"
        return f"--energy {self.energy:g}" if self.energy is not None else f"--ratio {self.ratio:g}"

    def choose(self, s) -> int:
        return lowrank.choose_rank(s, self.rank, self.energy, self.ratio)


@dataclass
class ModuleChange:
    """One module's new rank and the share of its Σσ² kept."""

    name: str
    algo: str
    rank_before: int
    rank_after: int
    energy: float
    total: float  # Σσ² of the module's effective ΔW (alpha/r applied), for the file's total

    def to_dict(self) -> dict:
        return {
            "module": self.name,
            "algo": self.algo,
            "rank_before": self.rank_before,
            "rank_after": self.rank_after,
            "energy": self.energy,
        }


def file_energy(modules: list[ModuleChange]) -> float:
    """Share of the whole file's Σ‖ΔW‖²_F kept (modules weighted by their own energy)."""
    total = sum(m.total for m in modules)
    kept = sum(m.total * m.energy for m in modules)
    return 1.0 if total == 0 else kept / total


@dataclass
class ResizeResult:
    path: Path
    modules: list[ModuleChange]
    bytes_before: int
    bytes_after: int
    warnings: DiagnosticBag = field(default_factory=DiagnosticBag)

    @property
    def energy(self) -> float:
        return file_energy(self.modules)

    def to_dict(self) -> dict:
        return {
            "output": str(self.path),
            "energy": self.energy,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "modules": [m.to_dict() for m in self.modules],
        }


def check_resizable(
    modules: list[AdapterModule], dense_fallback: bool, bag: DiagnosticBag, name: str
) -> None:
    """F720 for modules no SVD applies to; F724 for LoHa unless the dense fallback is on."""
    help = "Resize LoRA, LoCon (and, with --dense-fallback, LoHa) files made for SDXL."
    lowrank.refuse_unfactorable(modules, bag, name, "resized", help)
    loha = [m for m in modules if m.algo == "loha"]
    if loha and not dense_fallback:
        bag.error(
            "F724",
            f"`{name}` holds {len(loha)} LoHa module(s) (for example "
            f"`{loha[0].source}`); a LoHa's Hadamard product has no rank to cut.",
            "Pass --dense-fallback to rewrite them as plain LoRA modules of the chosen "
            "rank (the SVD of each dense weight change), or keep the file as it is.",
        )


def resize_module(
    m: AdapterModule, criterion: Criterion, dtype
) -> tuple[AdapterModule, ModuleChange]:
    """The truncated module (same component/path) and what it kept."""
    scale = m.scale
    if m.algo == "loha":
        u, s, vh = lowrank.dense_svd(lowrank.delta_matrix(m))
        scale = 1.0  # ΔW already carries alpha/r; the new LoRA gets alpha = rank
    else:
        u, s, vh = lowrank.factor_svd(*lowrank.up_down(m))
    k = criterion.choose(s)
    cut = lowrank.truncate(u, s, vh, k)
    out_dtype = dtype or next(iter(m.tensors.values())).dtype
    tensors = lowrank.as_module_tensors(cut.up, cut.down, lowrank.kernel_of(m), out_dtype)
    new = AdapterModule(m.component, m.path, m.source, tensors, scale * k, "resized")
    total = float((s**2).sum()) * scale**2
    change = ModuleChange(m.source, m.display_algo, m.rank, k, cut.energy, total)
    return new, change


def resize_file(
    src, dst, criterion: Criterion, dense_fallback: bool = False, dtype=None
) -> ResizeResult:
    """Resize every module of the LoRA file `src` and write `dst` in the same layout."""
    from lorafile.runtime.lorafiles.convert import parse_dtype

    criterion.check()
    check_outputs(Path(dst), [Path(src)])
    bag = DiagnosticBag(file=str(src))
    lora = read_lora(src)
    check_resizable(lora.modules, dense_fallback, bag, Path(src).name)
    bag.raise_if_errors()
    fill_alphas(lora.modules, None, bag)
    pairs = [resize_module(m, criterion, parse_dtype(dtype)) for m in lora.modules]
    modules, changes = [p[0] for p in pairs], [p[1] for p in pairs]
    meta = {
        k: v for k, v in lora.metadata.items() if k not in ("ss_network_dim", "ss_network_alpha")
    }
    result = ResizeResult(Path(dst), changes, Path(src).stat().st_size, 0, bag)
    meta["lorafile.resized"] = json.dumps(
        {
            "from": Path(src).name,
            "criterion": criterion.describe(),
            "energy": round(result.energy, 6),
        }
    )
    layout = "diffusers" if lora.layout == "diffusers" else "kohya"
    write_lora(modules, dst, layout, meta)
    result.bytes_after = Path(dst).stat().st_size
    return result
