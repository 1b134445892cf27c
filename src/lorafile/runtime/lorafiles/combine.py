"""`lorafile merge A B -o C` (no `--base`): several LoRA files into one LoRA file.

Two ways, per module (the same layer in several files; a layer in one file only is copied):

* **concatenation** (default, exact): ranks are stacked. With ΔW_i = s_i·(alpha_i/r_i)·up_i·down_i
  for strength s_i, down = [down_1; down_2; ...] (rows) and up = [c_1·up_1, c_2·up_2, ...]
  (columns, c_i = s_i·alpha_i/r_i), alpha = rank = Σ r_i, so up·down = Σ ΔW_i exactly. The file
  grows to the sum of the ranks.
* **SVD to `rank`** (lossy, kohya's svd_merge_lora.py): the SVD of Σ ΔW_i (from the stacked
  factors, `lowrank.factor_svd`; LoHa modules from their dense ΔW), truncated to `rank`, √σ on
  each side, alpha = rank. The retained energy Σ_{i<k} σᵢ² / Σ σᵢ² is reported per module and
  for the whole file.

Each input is recorded in the metadata (`lorafile.combined`: file, sha256, strength).
Diagnostic codes: F720 module that cannot be merged, F724 LoHa in concatenation mode,
F725 a bad --rank; F713 output overwrites an input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag, fail
from lorafile.runtime.lorafiles import lowrank
from lorafile.runtime.lorafiles.convert import AdapterModule, parse_dtype, write_lora
from lorafile.runtime.lorafiles.merge import LoadedLora, LoraSpec, check_outputs, load_loras
from lorafile.runtime.lorafiles.resize import ModuleChange, file_energy


@dataclass
class CombineResult:
    path: Path
    mode: str  # "concat" or "svd"
    modules: list[ModuleChange]
    inputs: list[dict]
    warnings: DiagnosticBag = field(default_factory=DiagnosticBag)

    @property
    def energy(self) -> float:
        return file_energy(self.modules)

    def to_dict(self) -> dict:
        return {
            "output": str(self.path),
            "mode": self.mode,
            "energy": self.energy,
            "inputs": self.inputs,
            "modules": [m.to_dict() for m in self.modules],
        }


def group_modules(loras: list[LoadedLora]) -> dict[tuple, list[tuple[AdapterModule, float]]]:
    """(component, path) -> [(module, strength), ...] in input order."""
    groups: dict[tuple, list[tuple[AdapterModule, float]]] = {}
    for lora in loras:
        for m in lora.modules:
            groups.setdefault((m.component, m.path), []).append((m, lora.spec.strength))
    return groups


def stacked(parts: list[tuple[AdapterModule, float]]):
    """(up [out, R], down [R, in·k·k]) float64 with up·down = Σ s_i·ΔW_i."""
    import torch

    ups, downs = [], []
    for m, strength in parts:
        up, down = lowrank.up_down(m)
        ups.append(up * (strength * m.scale))
        downs.append(down)
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def concat_module(parts, dtype) -> tuple[AdapterModule, ModuleChange]:
    up, down = stacked(parts)
    first = parts[0][0]
    tensors = lowrank.as_module_tensors(up, down, lowrank.kernel_of(first), dtype)
    rank = int(down.shape[0])
    module = AdapterModule(
        first.component, first.path, first.source, tensors, float(rank), "merged"
    )
    total = float((up @ down).square().sum())
    return module, ModuleChange(first.source, "LoRA", rank, rank, 1.0, total)


def svd_module(parts, rank: int, dtype) -> tuple[AdapterModule, ModuleChange]:
    if all(m.algo == "lora" for m, _ in parts):
        u, s, vh = lowrank.factor_svd(*stacked(parts))
    else:
        dense = sum(lowrank.delta_matrix(m) * strength for m, strength in parts)
        u, s, vh = lowrank.dense_svd(dense)
    k = lowrank.choose_rank(s, rank=rank)
    cut = lowrank.truncate(u, s, vh, k)
    first = parts[0][0]
    tensors = lowrank.as_module_tensors(cut.up, cut.down, lowrank.kernel_of(first), dtype)
    module = AdapterModule(first.component, first.path, first.source, tensors, float(k), "merged")
    before = sum(m.rank for m, _ in parts)
    return module, ModuleChange(first.source, "LoRA", before, k, cut.energy, float((s**2).sum()))


def combine_files(specs: list[LoraSpec], out, rank: int | None = None, dtype=None) -> CombineResult:
    """Merge the LoRA files `specs` into one LoRA file `out` (concatenation, or SVD to `rank`)."""
    if rank is not None and rank < 1:
        raise fail("F725", f"--rank {rank} is out of range.", "--rank is at least 1.")
    check_outputs(Path(out), [s.path for s in specs])
    bag = DiagnosticBag()
    loras = load_loras(specs, bag)
    loha = [m for lora in loras for m in lora.modules if m.algo == "loha"]
    if loha and rank is None:
        bag.error(
            "F724",
            f"{len(loha)} LoHa module(s) (for example `{loha[0].source}`) cannot be "
            "concatenated: a Hadamard product has no ranks to stack.",
            "Pass --rank N to merge by SVD of the summed weight changes.",
        )
    bag.raise_if_errors()
    first = next((m for lora in loras for m in lora.modules), None)
    if first is None:
        raise fail(
            "F720", "The inputs hold no LoRA module.", "Check the files with `lorafile inspect`."
        )
    out_dtype = parse_dtype(dtype) or next(iter(first.tensors.values())).dtype
    pairs = [
        svd_module(parts, rank, out_dtype) if rank is not None else concat_module(parts, out_dtype)
        for parts in group_modules(loras).values()
    ]
    inputs = [lora.record() for lora in loras]
    meta = {"lorafile.combined": json.dumps(inputs), "ss_network_module": "networks.lora"}
    write_lora([p[0] for p in pairs], out, "kohya", meta)
    mode = "svd" if rank is not None else "concat"
    return CombineResult(Path(out), mode, [p[1] for p in pairs], inputs, bag)
