"""Tracing tools for the exact VRAM simulation (runtime/memory/simulate.py).

`MemoryTracker` counts live storage bytes; `TrackAllocations` (a TorchDispatchMode) hands it
every tensor an aten op creates; `CudaAutocast` (a TorchFunctionMode) applies CUDA's autocast
policy and GPU attention kernels to meta tensors; `module_hooks` keeps the module stack so that
each tensor is attributed to the module that made it. Everything imports torch lazily.
"""

from __future__ import annotations

import heapq
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

ALLOC_BLOCK = 512
"""The CUDA caching allocator rounds every allocation up to 512 bytes (CUDACachingAllocator.cpp
kMinBlockSize); max_memory_allocated counts the rounded sizes."""

CATEGORIES = (
    "base weights",
    "encoder weights",
    "adapter weights",
    "gradients",
    "optimizer state",
    "activations",
    "recomputed activations",
    "backward temporaries",
    "inputs",
)


def _rounded(nbytes: int) -> int:
    return -(-nbytes // ALLOC_BLOCK) * ALLOC_BLOCK


@dataclass
class LiveTensor:
    """One live storage: its size, what it is, and where it was made."""

    nbytes: int
    category: str
    op: str
    module: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class Snapshot:
    """What was alive at the peak."""

    total: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)
    largest: list[LiveTensor] = field(default_factory=list)
    phase: str = ""


class MemoryTracker:
    """Counts live storage bytes of every tensor created while active (and registered ones).

    Each storage is counted once, however many views point at it, from its creation until the
    last Python/autograd reference drops (a weakref callback), which is when the caching
    allocator would take the block back. Categories come from the phase the tensor was made in
    (`forward`, `backward`, ...) unless registered explicitly (weights, optimizer state).
    """

    def __init__(self, snapshot_top: int = 12):
        self.live: dict[int, LiveTensor] = {}
        self._refs: dict[int, Any] = {}
        self.current = 0
        self.peak = 0
        self.by_category: dict[str, int] = defaultdict(int)
        self.phase = "setup"
        self.category = "inputs"
        self.module_stack: list[str] = []
        self.snapshot = Snapshot()
        self._snapshot_at = 0
        self._top = snapshot_top
        self.phase_peaks: dict[str, int] = {}
        self.flops: dict[str, int] = defaultdict(int)
        """FLOPs by phase, counted by the dispatch mode."""

    def add(
        self, tensor: Any, category: str | None = None, op: str = "", module: str | None = None
    ) -> None:
        """Start counting `tensor`'s storage (no-op if it is already counted)."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.live:
            if category is not None:
                self._recategorise(key, category)
            return
        cat = category or self.category
        if category is None and self.phase == "backward" and self.module_stack:
            cat = "recomputed activations"  # a module's forward running inside backward
        item = LiveTensor(
            _rounded(storage.nbytes()),
            cat,
            op,
            module if module is not None else (self.module_stack[-1] if self.module_stack else ""),
            tuple(tensor.shape),
            str(tensor.dtype).removeprefix("torch."),
        )
        self.live[key] = item
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._free(key))
        self.current += item.nbytes
        self.by_category[cat] += item.nbytes
        self._note_peak()

    def _recategorise(self, key: int, category: str) -> None:
        item = self.live[key]
        self.by_category[item.category] -= item.nbytes
        item.category = category
        self.by_category[category] += item.nbytes

    def _free(self, key: int) -> None:
        item = self.live.pop(key, None)
        self._refs.pop(key, None)
        if item is not None:
            self.current -= item.nbytes
            self.by_category[item.category] -= item.nbytes

    def _note_peak(self) -> None:
        if self.current > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.current
        if self.current <= self.peak:
            return
        self.peak = self.current
        # A full snapshot costs O(live tensors); take one per 0.5% of growth, and always at the
        # end of a phase (see `end_phase`), so the reported breakdown is within 0.5% of the peak.
        if self.current > self._snapshot_at * 1.005:
            self._take_snapshot()

    def _take_snapshot(self) -> None:
        by_module: dict[str, int] = defaultdict(int)
        for item in self.live.values():
            if item.category in ("activations", "backward temporaries"):
                by_module[_block_of(item.module)] += item.nbytes
        self.snapshot = Snapshot(
            total=self.current,
            by_category={k: v for k, v in self.by_category.items() if v},
            by_module=dict(by_module),
            largest=heapq.nlargest(self._top, self.live.values(), key=lambda t: t.nbytes),
            phase=self.phase,
        )
        self._snapshot_at = self.current

    def refresh_snapshot(self) -> None:
        """Retake the snapshot if the exact peak was reached after the last one."""
        if self.current >= self.peak:
            self._take_snapshot()


def _block_of(module: str) -> str:
    """`down_blocks.2.attentions.1.transformer_blocks.3.attn1` -> `down_blocks.2.attentions.1`."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part in ("attentions", "resnets", "downsamplers", "upsamplers") and i + 1 < len(parts):
            return ".".join(parts[: i + 2])
    return ".".join(parts[:2]) or "(top level)"


# --- CUDA behaviour on the meta device -------------------------------------------------------

# CUDA autocast's op lists (aten/src/ATen/autocast_mode.cpp, `lower_precision_fp` and `fp32`),
# by the name the op has at the torch-function level; only ops the SDXL step can reach.
LOW_PRECISION_OPS = frozenset(
    [
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "convolution",
        "addmm",
        "addmv",
        "addr",
        "matmul",
        "__matmul__",
        "einsum",
        "mm",
        "mv",
        "linear",
        "addbmm",
        "baddbmm",
        "bmm",
    ]
)
FP32_OPS = frozenset(
    [
        "layer_norm",
        "group_norm",
        "native_layer_norm",
        "exp",
        "log",
        "log1p",
        "pow",
        "rsqrt",
        "reciprocal",
        "softplus",
        "mse_loss",
        "l1_loss",
        "smooth_l1_loss",
        "huber_loss",
        "cosine_similarity",
        "logsumexp",
        "norm",
        "interpolate",
        "upsample_nearest2d",
        "upsample_bilinear2d",
        "softmax",
        "log_softmax",
        "cumsum",
        "cumprod",
        "prod",
    ]
)


def _flash_sdpa(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_: Any
):
    """SDPA as a GPU runs it: flash for bf16/fp16 without a mask, memory-efficient otherwise."""
    import torch

    aten = torch.ops.aten
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16):
        return aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale
        )[0]
    return aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale
    )[0]


def autocast_mode_class():
    import torch
    from torch.overrides import TorchFunctionMode

    class CudaAutocast(TorchFunctionMode):
        """CUDA autocast's casting rules and GPU attention kernels, applied to meta tensors."""

        def __init__(self, dtype: torch.dtype | None):
            super().__init__()
            self.dtype = dtype
            self.cache: dict[int, Any] = {}
            """Like autocast's cast cache: a weight that requires grad is cast once per
            autocast region, and the copy lives until the region ends."""

        def _cast(self, value: Any, dtype: torch.dtype) -> Any:
            if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                return value
            if value.dtype == dtype or value.dtype == torch.float64:
                return value
            if value.is_leaf and value.requires_grad:
                key = (id(value), dtype)
                if key not in self.cache:
                    self.cache[key] = value.to(dtype)
                return self.cache[key]
            return value.to(dtype)

        def _cast_all(self, args, kwargs, dtype):
            args = tuple(
                [self._cast(v, dtype) for v in a]
                if isinstance(a, list | tuple)
                else self._cast(a, dtype)
                for a in args
            )
            return args, {k: self._cast(v, dtype) for k, v in kwargs.items()}

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if self.dtype is not None:
                if name in LOW_PRECISION_OPS or name == "scaled_dot_product_attention":
                    args, kwargs = self._cast_all(args, kwargs, self.dtype)
                elif name in FP32_OPS and "dtype" not in kwargs:
                    args, kwargs = self._cast_all(args, kwargs, torch.float32)
            if name == "scaled_dot_product_attention":
                return _flash_sdpa(*args, **kwargs)
            return func(*args, **kwargs)

    return CudaAutocast


def dispatch_mode_class():
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class TrackAllocations(TorchDispatchMode):
        """Hands every tensor an aten op returns to the tracker (views share a storage, so
        they are counted once)."""

        def __init__(self, tracker: MemoryTracker):
            from torch.utils.flop_counter import flop_registry

            super().__init__()
            self.tracker = tracker
            self.flop_formulas = flop_registry

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import torch

            out = func(*args, **(kwargs or {}))
            name = func.__name__
            # FLOPs by torch.utils.flop_counter's own formulas (matmuls, convolutions,
            # attention). Not FlopCounterMode itself: its module tracker's autograd hooks keep
            # checkpointed activations alive and would double the traced peak.
            formula = self.flop_formulas.get(func._overloadpacket)
            if formula is not None:
                self.tracker.flops[self.tracker.phase] += formula(
                    *args, **(kwargs or {}), out_val=out
                )
            for t in tree_leaves(out):
                # Host tensors (noise drawn on the CPU, cached entries) are not device memory.
                if isinstance(t, torch.Tensor) and t.device.type == "meta":
                    self.tracker.add(t, op=name)
            return out

    return TrackAllocations


def module_hooks(tracker: MemoryTracker, names: dict[int, str]):
    """Global forward hooks that keep the tracker's module stack (recomputation included)."""
    from torch.nn.modules import module as nn_module

    def pre(mod, _args):
        tracker.module_stack.append(names.get(id(mod), type(mod).__name__))

    def post(_mod, _args, _out):
        if tracker.module_stack:
            tracker.module_stack.pop()

    return [
        nn_module.register_module_forward_pre_hook(pre),
        nn_module.register_module_forward_hook(post, always_call=True),
    ]


def autocast_in_checkpoints(models: list[Any], make_autocast) -> None:
    """Make checkpointed blocks enter the emulated autocast themselves.

    torch.utils.checkpoint re-enters the autocast state of the forward when it recomputes a
    block during backward; a torch-function mode is not carried into backward, so each
    checkpointed call opens its own (diffusers and transformers both call
    `module._gradient_checkpointing_func(block, *args)`).
    """
    for model in models:
        for mod in model.modules():
            original = getattr(mod, "_gradient_checkpointing_func", None)
            if original is None or getattr(original, "_memsim", False):
                continue

            def wrapped(block, *args, _original=original, **kwargs):
                def run(*a, **k):
                    with make_autocast():
                        return block(*a, **k)

                return _original(run, *args, **kwargs)

            wrapped._memsim = True
            mod._gradient_checkpointing_func = wrapped
