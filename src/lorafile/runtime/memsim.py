"""Exact VRAM simulation: trace one real training step on the meta device and count live bytes.

`lorafile lint R --exact` runs this. It builds the FULL-size SDXL architecture (2.57 B UNet
parameters) on PyTorch's meta device, where tensors have shapes, dtypes and storages but no data,
attaches the recipe's adapter with peft, and runs one training step (text/latent encoding when
not cached, UNet forward and backward, optimizer step) while a dispatch mode records every
storage that is allocated and when the last reference to it goes away. The peak of live bytes is
what `torch.cuda.max_memory_allocated` would report on a GPU, up to the allocator's rounding
(emulated: 512-byte blocks) and the CUDA context / cuBLAS workspace (not counted here either).

Why meta and not `FakeTensorMode`: the same step traces about four times faster on meta, and
this machine's CPU build of torch cannot fake CUDA tensors. Two CUDA behaviours are therefore
emulated so that the trace saves what a GPU run saves:

* autocast: CUDA's autocast policy (aten/src/ATen/autocast_mode.cpp) runs matmuls and
  convolutions in the low-precision dtype but layer_norm, group_norm, softmax, upsampling and
  losses in fp32. CPU autocast keeps norms in bf16, which would under-count activations, so
  `CudaAutocast` applies the CUDA lists at the torch-function level (above autograd, where the
  real autocast's casts are also recorded by autograd), including its weight-cast cache.
* attention: SDPA on meta tensors falls back to the math kernel, which materialises the
  attention matrix. On a GPU, SDPA with bf16/fp16 and head dim 64 picks the flash kernel, which
  saves only the output and a fp32 log-sum-exp. `CudaAutocast` routes SDPA to
  `aten._scaled_dot_product_flash_attention`, whose meta kernel and backward are the GPU's.
"""

from __future__ import annotations

import heapq
import time
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

    def add(self, tensor: Any, category: str | None = None, op: str = "") -> None:
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
            self.module_stack[-1] if self.module_stack else "",
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


def _autocast_mode_class():
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


def _dispatch_mode_class():
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class TrackAllocations(TorchDispatchMode):
        """Hands every tensor an aten op returns to the tracker (views share a storage, so
        they are counted once)."""

        def __init__(self, tracker: MemoryTracker):
            super().__init__()
            self.tracker = tracker

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import torch

            out = func(*args, **(kwargs or {}))
            name = func.__name__
            for t in tree_leaves(out):
                # Host tensors (noise drawn on the CPU, cached entries) are not device memory.
                if isinstance(t, torch.Tensor) and t.device.type == "meta":
                    self.tracker.add(t, op=name)
            return out

    return TrackAllocations


# --- What is simulated -----------------------------------------------------------------------


@dataclass(frozen=True)
class SimSettings:
    """Every recipe setting that changes the memory of a training step, and nothing else."""

    batch: int = 1
    width: int = 1024
    height: int = 1024
    checkpointing: bool = True
    precision: str = "bf16"
    base_precision: str = "bf16"
    algo: str = "lora"
    rank: int = 16
    conv_rank: int = 16
    targets: tuple[str, ...] = ("attention", "ff")
    dropout: float = 0.0
    text_encoder: bool = False
    optimizer: str = "adamw8bit"
    cache_latents: bool = True
    cache_text: bool = True

    @classmethod
    def from_recipe(cls, recipe: Any, resolution: tuple[int, int] | None = None) -> SimSettings:
        """The settings of `recipe` at its largest bucket (or at `resolution`, w x h)."""
        t, a = recipe.train, recipe.adapter
        width, height = resolution or _largest_area(recipe)
        return cls(
            batch=t.batch,
            width=width,
            height=height,
            checkpointing=t.checkpointing,
            precision=t.precision,
            base_precision=t.effective_base_precision,
            algo=a.algo,
            rank=a.rank,
            conv_rank=a.effective_conv_rank,
            targets=tuple(a.targets),
            dropout=a.dropout,
            text_encoder=a.text_encoder,
            optimizer=t.optimizer,
            cache_latents=t.cache.latents,
            cache_text=t.cache.text and not a.text_encoder,
        )


def _largest_area(recipe: Any) -> tuple[int, int]:
    """The dataset resolution with the most pixels: buckets keep about that area, and the peak
    is set by the largest step."""
    res = max((d.resolution for d in recipe.datasets), key=lambda r: r.pixels)
    return res.width, res.height


@dataclass
class SimResult:
    """The outcome of one simulated step."""

    settings: SimSettings
    peak: int
    snapshot: Snapshot
    phase_peaks: dict[str, int]
    resident: dict[str, int]
    seconds: float
    note: str = ""

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30

    def to_dict(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "peak_bytes": self.peak,
            "peak_gib": round(self.peak_gib, 3),
            "peak_phase": s.phase,
            "at_peak_by_category": s.by_category,
            "at_peak_by_block": dict(sorted(s.by_module.items(), key=lambda kv: -kv[1])[:8]),
            "largest_tensors": [
                {
                    "bytes": t.nbytes,
                    "what": t.category,
                    "op": t.op,
                    "module": t.module,
                    "shape": list(t.shape),
                    "dtype": t.dtype,
                }
                for t in s.largest
            ],
            "phase_peaks": self.phase_peaks,
            "resident_before_step": self.resident,
            "seconds": round(self.seconds, 2),
            "note": self.note,
        }


# --- Building the full-size model on the meta device -----------------------------------------

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "float8_e4m3fn"}


def _dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def adapter_dict(s: SimSettings) -> dict[str, Any]:
    """The resolved adapter settings in the shape `runtime.adapters.attach` takes (the plan's
    `resolved.adapter`); alpha does not change memory."""
    return {
        "algo": s.algo,
        "rank": s.rank,
        "alpha": float(s.rank),
        "conv_rank": s.conv_rank,
        "conv_alpha": float(s.conv_rank),
        "targets": list(s.targets),
        "dropout": s.dropout,
        "text_encoder": s.text_encoder,
    }


@dataclass
class MetaModels:
    """The full-size SDXL parts for one simulated run, on the meta device."""

    unet: Any
    text_encoders: list[Any]
    vae: Any
    trainable: list[Any]
    names: dict[int, str]


def build_meta_models(s: SimSettings) -> MetaModels:
    """The SDXL base 1.0 architecture (shipped configs, `runtime.sdxl`) with the recipe's adapter
    attached by the trainer's own `runtime.adapters.attach`, weights in the base precision."""
    from diffusers.utils import logging as diffusers_logging

    from lorafile.runtime import adapters, sdxl

    # Only the parts the step touches: cached encoders are off the device and never called.
    wanted = ["unet"] + (["text_encoder", "text_encoder_2"] if not s.cache_text else [])
    wanted += ["vae"] if not s.cache_latents else []
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # `.to(dtype)` warns about fp32 modules (none here)
    try:
        parts = sdxl.build_sdxl_meta(parts=tuple(wanted))
        unet, vae, tes = _cast_parts(parts, s)
    finally:
        diffusers_logging.set_verbosity(level)
    if s.checkpointing:
        unet.enable_gradient_checkpointing()
    ad = adapter_dict(s)
    trainable = adapters.attach(unet, ad, unet=True)
    if s.text_encoder:
        for te in tes:
            trainable += adapters.attach(te, ad, unet=False)
            if s.checkpointing:
                te.gradient_checkpointing_enable()
    names = {}
    for prefix, model in zip(
        ("unet", "te1", "te2", "vae"), (unet, *(tes or [None, None]), vae), strict=True
    ):
        if model is None:
            continue
        names.update({id(m): f"{prefix}.{n}" if n else prefix for n, m in model.named_modules()})
    return MetaModels(unet, tes, vae, trainable, names)


def _cast_parts(parts: Any, s: SimSettings):
    """As Trainer._load_models: fp8 bases are trained from bf16 weights, and the VAE stays
    fp32 (SDXL's VAE overflows in fp16)."""
    import torch

    base = _dtype("bf16" if s.base_precision == "fp8" else s.base_precision)
    unet = parts.unet.to(base)
    vae = parts.vae.to(torch.float32) if parts.vae is not None else None
    tes = [te.to(base) for te in (parts.text_encoder, parts.text_encoder_2) if te is not None]
    return unet, vae, tes


class _MetaTokenizer:
    """Stands in for a CLIP tokenizer: token ids of the right shape on the meta device."""

    model_max_length = 77

    def __call__(self, captions, **_: Any):
        import torch

        ids = torch.zeros(len(captions), self.model_max_length, dtype=torch.long, device="meta")
        return type("Tokens", (), {"input_ids": ids})()


# --- One training step, traced ---------------------------------------------------------------


def build_optimizer_state(s: SimSettings, params: list[Any]):
    """The trainer's optimizer (`runtime.optim.build_optimizer`) with its state created, as it
    is from the second step on: one step on zero gradients, then the gradients dropped.

    Optimizers that read values while stepping (Prodigy calls `.item()`) cannot step on the
    meta device; their state layout is taken from a step on one small host tensor per
    parameter shape and recreated on the meta device.
    """
    import torch

    from lorafile.runtime import optim

    opt = optim.build_optimizer(s.optimizer, [{"params": params, "lr": 1e-4}], {})
    for p in params:
        p.grad = torch.zeros_like(p)
    try:
        opt.step()
    except (RuntimeError, NotImplementedError):
        _state_from_host_probe(s, opt, params)
    opt.zero_grad(set_to_none=True)
    return opt


def _state_from_host_probe(s: SimSettings, opt, params: list[Any]) -> None:
    import torch

    from lorafile.runtime import optim

    layouts: dict[tuple, dict[str, Any]] = {}
    for p in params:
        key = (tuple(p.shape), p.dtype)
        if key not in layouts:
            host = torch.nn.Parameter(torch.zeros(p.shape, dtype=p.dtype))
            host.grad = torch.zeros_like(host)
            probe = optim.build_optimizer(s.optimizer, [{"params": [host], "lr": 1e-4}], {})
            probe.step()
            layouts[key] = probe.state[host]
        opt.state[p] = {
            k: torch.empty(v.shape, dtype=v.dtype, device="meta") if torch.is_tensor(v) else v
            for k, v in layouts[key].items()
        }


def _optimizer_tensors(opt) -> list[Any]:
    import torch

    return [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]


def _register_weights(tracker: MemoryTracker, s: SimSettings, m: MetaModels) -> None:
    """Everything on the device before a step: weights of the UNet and of the encoders that
    the caches did not replace (Trainer._fill_caches moves cached encoders to the host)."""
    trainable = {id(p) for p in m.trainable}
    on_device = [m.unet]
    on_device += [] if s.cache_text else list(m.text_encoders)
    on_device += [] if s.cache_latents else [m.vae]
    for model in on_device:
        base = "base weights" if model is m.unet else "encoder weights"
        for p in list(model.parameters()) + list(model.buffers()):
            tracker.add(p, "adapter weights" if id(p) in trainable else base)


class _TraceTrainer:
    """Stands in for `runtime.train.Trainer` during the traced step.

    The trainer's own `loss_step` and `conditioning` run unchanged (bound to this object), so
    the simulation follows the native trainer's code path: the same encoders, noise and
    timestep draws, UNet call and loss. Only what comes from disk is replaced: cache look-ups
    return host tensors of the cached shapes, and images to encode are meta pixels.
    """

    def __init__(self, s: SimSettings, m: MetaModels, make_autocast):
        import torch
        from diffusers import DDPMScheduler

        from lorafile.runtime import data, sdxl

        self.s, self.seed, self.device = s, 0, torch.device("meta")
        tok = _MetaTokenizer()
        tes = m.text_encoders or [None, None]
        self.models = sdxl.SDXLComponents(
            unet=m.unet, text_encoder=tes[0], text_encoder_2=tes[1], vae=m.vae,
            tokenizer=tok, tokenizer_2=tok,
        )  # fmt: skip
        self.tokenizers, self.te_id = (tok, tok), "memsim"
        self.noise_scheduler = DDPMScheduler.from_config(sdxl.sdxl_config("scheduler"))
        ns = _Namespace
        self.recipe = ns(
            base=ns(prediction="epsilon", clip_skip=None),
            train=ns(noise_offset=0.0, min_snr_gamma=None),
        )
        self.plan = {"memory": {"cache_text": s.cache_text, "cache_latents": s.cache_latents}}
        self.items = [data.ImageItem("", "", s.width, s.height, "", (s.width, s.height), source=0)]
        self.reg_weight = 1.0
        self.te_params = [p for te in m.text_encoders for p in te.parameters() if p.requires_grad]
        self.text_cache = _HostTextCache()
        self.accelerator = ns(autocast=make_autocast)

    def _caption(self, *_: Any) -> str:
        return ""

    def latents(self, batch, generator):
        """Trainer.latents without the image files: cached posteriors live on the host;
        without the cache each image is VAE-encoded on the device, one at a time."""
        import torch

        from lorafile.runtime import cache

        h, w = self.s.height // 8, self.s.width // 8
        if self.s.cache_latents:
            mean = torch.zeros(len(batch), 4, h, w)
            std = torch.ones_like(mean)
            return (mean + std * torch.randn(mean.shape, generator=generator)).to(self.device)
        vae = self.models.vae
        means, stds = [], []
        for _ in batch:
            pixels = torch.empty(1, 3, self.s.height, self.s.width, device=self.device)
            mean, std = cache.encode_latents(vae, pixels)
            means.append(mean[0])
            stds.append(std[0])
        mean, std = torch.stack(means), torch.stack(stds)
        return mean + std * torch.randn(mean.shape, device=self.device)

    def step(self):
        """One micro-batch forward through the trainer's own code."""
        from lorafile.runtime import data
        from lorafile.runtime.train import Trainer

        batch = [data.Sample(0) for _ in range(self.s.batch)]
        return Trainer.loss_step(self, 0, 0, batch)

    def conditioning(self, epoch: int, index: int, batch):
        from lorafile.runtime.train import Trainer

        return Trainer.conditioning(self, epoch, index, batch)


class _Namespace:
    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


class _HostTextCache:
    """The text cache's entries (fp32, on the host, as `cache.fill_text` stores them)."""

    def get(self, _key: str) -> dict[str, Any]:
        import torch

        return {"embeds": torch.zeros(77, 2048), "pooled": torch.zeros(1280)}


def _module_hooks(tracker: MemoryTracker, names: dict[int, str]):
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


def _autocast_in_checkpoints(models: list[Any], make_autocast) -> None:
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


def _trace_forward_backward(s: SimSettings, m: MetaModels, tracker: MemoryTracker) -> list:
    """One micro-batch through the trainer's loss and backward; returns the gradients."""
    dtype = None if s.precision == "no" else _dtype(s.precision)
    _autocast_in_checkpoints([m.unet, *m.text_encoders], lambda: _autocast_mode_class()(dtype))
    for p in m.trainable:
        p.register_post_accumulate_grad_hook(lambda p: tracker.add(p.grad, "gradients"))
    trainer = _TraceTrainer(s, m, lambda: _autocast_mode_class()(dtype))
    tracker.phase, tracker.category = "forward", "activations"
    loss = trainer.step()
    tracker.phase, tracker.category = "backward", "backward temporaries"
    loss.backward()  # accelerator.backward: the same for bf16/fp32; fp16 scales the loss first
    del loss
    return [p.grad for p in m.trainable]


@dataclass
class _ForwardBackward:
    """A traced forward+backward without optimizer state (added per optimizer: it is resident
    for the whole step, so it shifts every point of the trace by the same amount)."""

    models: MetaModels
    grads: list[Any]
    resident: dict[str, int]
    peak: int
    snapshot: Snapshot
    phase_peaks: dict[str, int]


_TRACES: dict[SimSettings, _ForwardBackward] = {}
"""The last traces by settings less the optimizer: linting one recipe with several
optimizers (or the test's optimizer sweep) traces the model once."""


def _forward_backward(s: SimSettings) -> _ForwardBackward:
    import torch

    key = SimSettings(**{**s.__dict__, "optimizer": ""})
    if key in _TRACES:
        return _TRACES[key]
    m = build_meta_models(s)
    tracker = MemoryTracker()
    _register_weights(tracker, s, m)
    resident = {k: v for k, v in tracker.by_category.items() if v}
    hooks = _module_hooks(tracker, m.names)
    try:
        with torch.random.fork_rng(devices=[]), _dispatch_mode_class()(tracker):
            grads = _trace_forward_backward(s, m, tracker)
    finally:
        for h in hooks:
            h.remove()
    tracker.refresh_snapshot()
    for p in m.trainable:
        p.grad = None
    trace = _ForwardBackward(m, grads, resident, tracker.peak, tracker.snapshot,
                             dict(tracker.phase_peaks))  # fmt: skip
    while len(_TRACES) >= 2:
        _TRACES.pop(next(iter(_TRACES)))
    _TRACES[key] = trace
    return trace


def _optimizer_phase(s: SimSettings, fb: _ForwardBackward) -> tuple[int, MemoryTracker, str]:
    """Optimizer state bytes, and a trace of clip + step + zero_grad with the gradients live."""
    import torch

    m = fb.models
    opt = build_optimizer_state(s, m.trainable)
    tracker = MemoryTracker()
    _register_weights(tracker, s, m)
    for t in _optimizer_tensors(opt):
        tracker.add(t, "optimizer state")
    state_bytes = tracker.by_category["optimizer state"]
    for p, g in zip(m.trainable, fb.grads, strict=True):
        p.grad = g
        tracker.add(g, "gradients")
    tracker.phase, tracker.category, note = "optimizer", "backward temporaries", ""
    try:
        with _dispatch_mode_class()(tracker):
            torch.nn.utils.clip_grad_norm_(m.trainable, 1.0)  # accelerator.clip_grad_norm_
            opt.step()
    except (RuntimeError, NotImplementedError) as err:
        note = f"the {s.optimizer} update itself was not traced ({err}); its state is counted"
    finally:
        for p in m.trainable:
            p.grad = None
    tracker.refresh_snapshot()
    return state_bytes, tracker, note


def simulate(settings: SimSettings | Any) -> SimResult:
    """Trace one training step of `settings` (or a Recipe) for the full-size SDXL model.

    Returns the peak of live bytes with a breakdown of what held it. About 10-20 s on one CPU
    core (the first call also imports diffusers); nothing is allocated for real.
    """
    s = settings if isinstance(settings, SimSettings) else SimSettings.from_recipe(settings)
    start = time.perf_counter()
    fb = _forward_backward(s)
    state, opt_tracker, note = _optimizer_phase(s, fb)
    phases = {k: v + state for k, v in fb.phase_peaks.items()}
    phases["optimizer"] = opt_tracker.peak
    if fb.peak + state >= opt_tracker.peak:
        snap = fb.snapshot
        by_cat = {**snap.by_category, "optimizer state": state}
        snapshot = Snapshot(snap.total + state, by_cat, snap.by_module, snap.largest, snap.phase)
    else:
        snapshot = opt_tracker.snapshot
    resident = {**fb.resident, "optimizer state": state}
    return SimResult(s, max(fb.peak + state, opt_tracker.peak), snapshot, phases, resident,
                     time.perf_counter() - start, note)  # fmt: skip


# --- Report ------------------------------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / 2**30:6.2f} GiB"


def render_text(result: SimResult, analytic: int | None = None) -> str:
    """The `lint --exact` section: peak, what holds it, the largest tensors, the phases."""
    s, snap = result.settings, result.snapshot
    lines = [
        f"exact simulation (full-size SDXL traced on the meta device, {result.seconds:.0f} s): "
        f"peak {result.peak_gib:.2f} GiB allocated in {snap.phase}",
        f"  {s.width}x{s.height}, batch {s.batch}, {s.algo} rank {s.rank}, {s.optimizer}, "
        f"precision {s.precision}, checkpointing {'on' if s.checkpointing else 'off'}",
    ]
    if analytic is not None:
        diff = analytic / result.peak - 1
        lines.append(
            f"  analytic model (allocated, without CUDA context) {_gib(analytic)} ({diff:+.1%})"
        )
    lines.append("  held at the peak:")
    for cat, n in sorted(snap.by_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {cat:<24} {_gib(n)}")
    blocks = sorted(snap.by_module.items(), key=lambda kv: -kv[1])[:5]
    if blocks:
        lines.append(
            "  activations by block: " + ", ".join(f"{b} {n / 2**20:.0f} MiB" for b, n in blocks)
        )
    lines.append("  largest tensors:")
    for t in snap.largest[:5]:
        where = t.module or "(outside modules)"
        lines.append(
            f"    {t.nbytes / 2**20:7.1f} MiB {t.category}: {t.op or 'weight'} {list(t.shape)} {t.dtype} in {where}"
        )
    lines.append(
        "  phase peaks: " + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in result.phase_peaks.items())
    )
    lines.append(
        "  (tensor bytes as torch.cuda.max_memory_allocated counts them; nvidia-smi adds the CUDA "
        "context, ~0.5 GiB, and the allocator's cache)"
    )
    if result.note:
        lines.append(f"  note: {result.note}")
    return "\n".join(lines) + "\n"


def exact_report(recipe: Any) -> tuple[str, dict[str, Any]]:
    """Simulate `recipe` and return (text, json) for `lorafile lint --exact`."""
    result = simulate(recipe)
    analytic = None
    try:
        from lorafile.compiler import vram

        est = vram.estimate(recipe)
        analytic = sum(c.bytes for c in est.components if not c.name.startswith("CUDA context"))
    except Exception:  # the comparison is informative; the simulation stands on its own
        analytic = None
    data = result.to_dict()
    data["analytic_allocated_bytes"] = analytic
    return render_text(result, analytic), data
