"""`lorafile merge --base`: fold LoRA / LoCon / LoHa files into an SDXL single-file checkpoint.

For every module of every LoRA the base weight it changes is found by name: the module's
diffusers path (from `convert.read_lora`, any layout) is spelled in the original single-file
layout by the key maps of `sgm_keys` (UNet `model.diffusion_model.*`, CLIP-L
`conditioner.embedders.0.transformer.*`, bigG `conditioner.embedders.1.model.*`, whose q/k/v
are three row blocks of one `in_proj_weight`). The merged weight is

    W' = W + Σ strength · ΔW,   ΔW = (alpha / r) · up · down   (LoHa: see `lowrank`)

computed in float32 and cast to the output dtype, exactly what a loader applying the LoRA at
that strength computes (diffusers' `fuse_lora`, ComfyUI's `LoraLoader`, A1111's `<lora:x:s>`).

Memory: the base is read with safetensors' `safe_open` one tensor at a time (reopened every
512 MiB, see `base_tensors`) and the output is written by `stream.write_streaming` (header
first, then each tensor's bytes), so the process holds one base tensor (at most the 253 MB
float32 copy of bigG's token embedding on SDXL) plus the LoRA files, never the whole checkpoint.
On a full-size random SDXL file (6.9 GB, fp16) and a rank-8 LoRA on all 1052 modules the peak
resident set (ru_maxrss) was 1.44 GiB, torch included (bench/merge_memory.py; docs/share.md).

Diagnostic codes: F720 a module that cannot be merged, F721 the base is not a single
`.safetensors` file, F722 a module that matches no base weight (wrong model), F723 a bad
`LORA:STRENGTH` argument; F713 the output would overwrite an input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag, fail
from lorafile.files import real_path
from lorafile.runtime.lorafiles.convert import (
    AdapterModule,
    LoraFile,
    fill_alphas,
    parse_dtype,
    read_lora,
)
from lorafile.runtime.lorafiles.lowrank import delta_matrix, refuse_unfactorable
from lorafile.runtime.lorafiles.stream import FLOAT_NAMES, Entry, dtype_name, write_streaming
from lorafile.runtime.models import sgm_keys

MERGED_METADATA_KEY = "lorafile.merged_loras"


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the strength to apply it at (the `PATH[:STRENGTH]` argument)."""

    path: Path
    strength: float = 1.0


def parse_lora_spec(text: str) -> LoraSpec:
    """`style.safetensors:0.8` -> (style.safetensors, 0.8); no `:NUMBER` suffix -> strength 1.
    A path that itself contains `:` works as long as it does not end in `:NUMBER`."""
    head, sep, tail = text.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            strength = float(tail)
        except ValueError:  # a path with `:` in it, unless it looks like a LoRA with a typo
            if Path(text).suffix.lower() != ".safetensors" and not Path(text).exists():
                raise _bad_strength(text, tail, "a number") from None
        else:
            if not math.isfinite(strength):  # NaN would spoil every weight
                raise _bad_strength(text, tail, "a finite number")
            return LoraSpec(Path(head), strength)
    return LoraSpec(Path(text), 1.0)


def _bad_strength(text: str, tail: str, what: str):
    return fail(
        "F723",
        f"`{text}`: the strength `{tail}` is not {what}.",
        "Write LORA.safetensors:0.8 (or no suffix for strength 1).",
    )


@dataclass
class LoadedLora:
    """A LoRA file read for merging: its modules (alpha filled in), strength and hash."""

    spec: LoraSpec
    file: LoraFile
    modules: list[AdapterModule]
    sha256: str

    def record(self) -> dict:
        return {
            "file": self.spec.path.name,
            "sha256": self.sha256,
            "strength": self.spec.strength,
            "modules": len(self.modules),
        }


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_loras(specs: list[LoraSpec], bag: DiagnosticBag) -> list[LoadedLora]:
    """Read each LoRA; F720 errors name the modules that cannot be merged."""
    out = []
    for spec in specs:
        lora = read_lora(spec.path)
        help = "Merge LoRA, LoCon and LoHa files made for SDXL."
        if refuse_unfactorable(lora.modules, bag, spec.path.name, "merged", help):
            continue
        fill_alphas(lora.modules, None, bag)
        out.append(LoadedLora(spec, lora, lora.modules, sha256_of(spec.path)))
    return out


def check_outputs(out: Path, inputs: list[Path]) -> None:
    """F713 if `out` is one of the inputs (merging into the base in place loses the base)."""
    target = real_path(out)
    for path in inputs:
        if real_path(path) == target:
            raise fail(
                "F713",
                f"The output `{out}` would overwrite the input `{path}`.",
                "Choose another -o.",
            )


# --- where each module lands in the base ---------------------------------------------------


@dataclass
class Target:
    """One module applied to one base weight: `block` is the q/k/v row block of bigG's fused
    in_proj_weight (None: the whole weight)."""

    module: AdapterModule
    strength: float
    block: int | None = None


def base_key(component: str, path: str, unet_config: dict) -> tuple[str, int | None]:
    """The single-file weight a module changes, and its q/k/v block (bigG only)."""
    if component == "unet":
        return sgm_keys.UNET_PREFIX + sgm_keys.unet_to_sgm(path + ".weight", unet_config), None
    if component == "text_encoder":
        return sgm_keys.TE1_PREFIX + sgm_keys.te1_to_sgm(path) + ".weight", None
    name, block = sgm_keys.te2_module_to_openclip(path)
    return sgm_keys.TE2_PREFIX + name, block


def module_shape(module: AdapterModule) -> tuple[int, int]:
    """(rows, columns) of the module's ΔW: out features, and in features times kernel size."""
    t = module.tensors
    if module.algo == "loha":
        return int(t["hada_w1_a"].shape[0]), int(t["hada_w1_b"][0].numel())
    return int(t["lora_up.weight"].shape[0]), int(t["lora_down.weight"][0].numel())


def plan_targets(loras: list[LoadedLora], unet_config: dict, shapes: dict, bag: DiagnosticBag):
    """{base key: [Target, ...]}; F722 errors for modules with no matching base weight."""
    targets: dict[str, list[Target]] = {}
    for lora in loras:
        missing = []
        for m in lora.modules:
            try:
                key, block = base_key(m.component, m.path, unet_config)
            except KeyError:
                key, block = "", None
            if not _fits(shapes.get(key), block, module_shape(m)):
                missing.append(m.source)
                continue
            targets.setdefault(key, []).append(Target(m, lora.spec.strength, block))
        if missing:
            bag.error(
                "F722",
                f"`{lora.spec.path.name}`: {len(missing)} module(s) match no weight "
                f"of the base (for example `{missing[0]}`).",
                "The LoRA was made for another model; merge it into the base it was "
                "trained on (an SDXL checkpoint).",
            )
    return targets


def _fits(shape, block: int | None, delta: tuple[int, int]) -> bool:
    if not shape:
        return False
    rows = shape[0] // 3 if block is not None else shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return (rows, cols) == delta


# --- the streaming merge -------------------------------------------------------------------


@dataclass
class MergeResult:
    """What `merge_into_base` wrote."""

    path: Path
    loras: list[dict]
    weights_changed: int
    tensors: int
    bytes: int
    warnings: DiagnosticBag = field(default_factory=DiagnosticBag)


def merge_into_base(base, specs: list[LoraSpec], out, dtype=None) -> MergeResult:
    """Fold `specs` into the single-file SDXL checkpoint `base`, writing `out` (atomically).

    `dtype`: fp16/bf16/fp32 (or a torch dtype) for the output's float tensors; default: each
    tensor keeps the base's dtype. Raises DiagnosticError (F70x, F713, F72x)."""
    from lorafile.files import atomic_path
    from lorafile.runtime.models.sdxl import check_model_path

    base = check_model_path(base)
    if base.is_dir() or base.suffix.lower() != ".safetensors":
        raise fail(
            "F721",
            f"`{base}` is not a single-file .safetensors checkpoint.",
            "Merge into a single-file SDXL checkpoint (what ComfyUI and A1111 load); "
            "for a diffusers folder, use its pipeline's fuse_lora.",
        )
    check_outputs(Path(out), [base, *(s.path for s in specs)])
    bag = DiagnosticBag()
    loras = load_loras(specs, bag)
    bag.raise_if_errors()
    out_dtype = parse_dtype(dtype)
    with _open_base(base) as f:  # the header only
        keys = list(f.keys())
        entries = _entries(f, keys, out_dtype)
        unet_config = _unet_config(f, base)
        meta = merged_metadata(f.metadata() or {}, loras)
    targets = plan_targets(loras, unet_config, {e.name: e.shape for e in entries}, bag)
    bag.raise_if_errors()
    with atomic_path(Path(out)) as tmp:
        tensors = _merged(base_tensors(base, entries), targets, out_dtype)
        size = write_streaming(tmp, entries, tensors, meta)
    records = [lora.record() for lora in loras]
    return MergeResult(Path(out), records, len(targets), len(keys), size, bag)


def _open_base(base: Path):
    """`safe_open` on the base; F703 when its header is not safetensors (truncated, damaged)."""
    from safetensors import safe_open

    from lorafile.runtime.models.sdxl import unreadable_safetensors

    try:
        return safe_open(str(base), framework="pt")
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise unreadable_safetensors(base, err) from err


def _entries(f, keys: list[str], out_dtype) -> list[Entry]:
    entries = []
    for key in keys:
        part = f.get_slice(key)
        name = part.get_dtype()
        if out_dtype is not None and name in FLOAT_NAMES:
            name = dtype_name(out_dtype)
        entries.append(Entry(key, name, tuple(part.get_shape())))
    return entries


def _unet_config(f, base: Path) -> dict:
    from lorafile.runtime.models.sdxl import _PROBES, single_file_configs

    keys = set(f.keys())
    probes = {k: f.get_tensor(k) for k in _PROBES if k in keys}
    return single_file_configs(probes, f.metadata() or {}, f"`{base.name}`")["unet"]


REOPEN_BYTES = 512 * 2**20


def base_tensors(path: Path, entries: list[Entry]):
    """(name, tensor) of the base in `entries` order, read with `safe_open`, which is
    reopened after each REOPEN_BYTES read. Why: safe_open memory-maps the whole file and the
    pages read stay mapped (counted in the process's resident set) until the handle closes;
    reopening releases them, so the resident set stays near one chunk, not the whole base."""
    from safetensors import safe_open

    start = 0
    while start < len(entries):
        read = 0
        with safe_open(str(path), framework="pt") as f:
            while start < len(entries) and read < REOPEN_BYTES:
                entry = entries[start]
                yield entry.name, f.get_tensor(entry.name)
                read += entry.nbytes
                start += 1


def _merged(tensors, targets: dict[str, list[Target]], out_dtype):
    """Base tensors with their LoRA deltas added, cast to `out_dtype` (None: the base's)."""
    import torch

    for key, tensor in tensors:
        if key in targets:
            native = tensor.dtype
            weight = tensor.to(torch.float32, copy=True)
            for t in targets[key]:
                rows = weight if t.block is None else weight.chunk(3, dim=0)[t.block]
                delta = delta_matrix(t.module, torch.float32) * t.strength
                rows += delta.reshape(rows.shape)  # chunk() is a view: writes reach `weight`
            tensor = weight.to(native if out_dtype is None else out_dtype)
        elif out_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(out_dtype)
        yield key, tensor


def merged_metadata(base_meta: dict[str, str], loras: list[LoadedLora]) -> dict[str, str]:
    """The base's metadata (configs, tokenizer marker, modelspec) plus one record per LoRA
    (file name, sha256, strength, modules), appended to any earlier merge's records."""
    meta = {k: str(v) for k, v in base_meta.items()}
    try:
        earlier = json.loads(meta.get(MERGED_METADATA_KEY, "[]"))
    except ValueError:
        earlier = []
    meta[MERGED_METADATA_KEY] = json.dumps([*earlier, *(x.record() for x in loras)])
    meta.setdefault("modelspec.sai_model_spec", "1.0.1")
    meta.setdefault("modelspec.architecture", "stable-diffusion-xl-v1-base")
    return meta
