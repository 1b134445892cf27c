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

import time
from dataclasses import dataclass
from typing import Any

from lorafile.runtime.memory.trace import (
    MemoryTracker,
    Snapshot,
    autocast_in_checkpoints,
    autocast_mode_class,
    dispatch_mode_class,
    module_hooks,
)

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
    factor: int | None = None
    dora: bool = False
    optimizer: str = "adamw8bit"
    cache_latents: bool = True
    cache_text: bool = True

    @classmethod
    def from_recipe(cls, recipe: Any, resolution: tuple[int, int] | None = None) -> SimSettings:
        """The settings of `recipe` at its largest bucket (or at `resolution`, w x h); `auto`
        settings as the VRAM model chooses them for the recipe's own budget."""
        from lorafile.compiler import vram

        recipe, _ = vram.resolve_auto(recipe, vram.hardware_budget(recipe))
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
            factor=a.factor,
            dora=a.dora,
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
    cpu_seconds: float = 0.0
    """CPU time of this process during the simulation (all threads)."""
    flops: dict[str, int] | None = None
    """FLOPs of one micro-batch by phase ("forward"; "backward" includes the recomputation
    of checkpointed blocks), as torch.utils.flop_counter counts them (matmuls, convolutions,
    attention; elementwise ops are not counted)."""

    @property
    def total_flops(self) -> int:
        return sum((self.flops or {}).values())

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
            "cpu_seconds": round(self.cpu_seconds, 2),
            "note": self.note,
            "flops_per_micro_batch": self.flops,
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
        "factor": s.factor,
        "dora": s.dora,
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

    from lorafile.runtime.models import sdxl
    from lorafile.runtime.train import adapters

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
    for te in tes:  # as Trainer._attach_adapters: untrained encoders are frozen
        if s.text_encoder:
            trainable += adapters.attach(te, ad, unet=False)
            if s.checkpointing:
                te.gradient_checkpointing_enable()
        else:
            te.requires_grad_(False)
    if s.base_precision == "fp8":
        _store_fp8(s, unet, tes)
    for model in (unet, *tes):
        for name, p in model.named_parameters():
            if ".lora_B." in name or ".hada_w2_a" in name:
                p._memsim_zero_init = True  # peft's initialisation (runtime/train/adapters.py)
    names = {}
    for prefix, model in zip(
        ("unet", "te1", "te2", "vae"), (unet, *(tes or [None, None]), vae), strict=True
    ):
        if model is None:
            continue
        names.update({id(m): f"{prefix}.{n}" if n else prefix for n, m in model.named_modules()})
    return MetaModels(unet, tes, vae, trainable, names)


def compute_dtype(s: SimSettings):
    """Trainer.dtype: the base precision, and for an fp8 base the dtype it computes in (fp16
    under fp16 mixed precision, else bf16); the fp8 storage comes after attach."""
    if s.base_precision == "fp8":
        return _dtype("fp16" if s.precision == "fp16" else "bf16")
    return _dtype(s.base_precision)


def _cast_parts(parts: Any, s: SimSettings):
    """As Trainer._load_models: the base in its compute dtype (an fp8 base is stored as fp8
    after the adapter is attached, `_store_fp8`), and the VAE in fp32 (SDXL's VAE overflows
    in fp16)."""
    import torch

    base = compute_dtype(s)
    unet = parts.unet.to(base)
    vae = parts.vae.to(torch.float32) if parts.vae is not None else None
    tes = [te.to(base) for te in (parts.text_encoder, parts.text_encoder_2) if te is not None]
    return unet, vae, tes


def _store_fp8(s: SimSettings, unet: Any, tes: list[Any]) -> None:
    """As Trainer._attach_adapters: the fp8 layers of runtime/train/fp8.py (they save the fp8 weight
    for backward, not a bf16 copy), on the UNet and on encoders that stay on the device."""
    from lorafile.runtime.models import sdxl
    from lorafile.runtime.train import fp8

    te1, te2 = tes or (None, None)
    models = sdxl.SDXLComponents(unet=unet, text_encoder=te1, text_encoder_2=te2)
    fp8.store_base_fp8(models, compute_dtype(s), encoders=bool(tes))


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

    from lorafile.runtime.train import optim

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

    from lorafile.runtime.train import optim

    layouts: dict[tuple, dict[str, Any]] = {}
    for p in params:
        # State can depend on the values: Prodigy keeps its p0 copy only of non-zero tensors,
        # and peft starts lora_B (LoHa: hada_w2_a) at zero, everything else random.
        zero = getattr(p, "_memsim_zero_init", False)
        key = (tuple(p.shape), p.dtype, zero)
        if key not in layouts:
            fill = torch.zeros if zero else torch.ones
            host = torch.nn.Parameter(fill(p.shape, dtype=p.dtype))
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
        prefix = m.names.get(id(model), "")
        for name, p in [*model.named_parameters(), *model.named_buffers()]:
            kind = "adapter weights" if id(p) in trainable else base
            tracker.add(p, kind, module=f"{prefix}.{name.rpartition('.')[0]}")


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

        from lorafile.runtime.models import sdxl
        from lorafile.runtime.train import data
        from lorafile.spec.models import Base, Train

        self.s, self.seed, self.device = s, 0, torch.device("meta")
        self.dtype = compute_dtype(s)  # as Trainer.dtype: an fp8 UNet's `.dtype` reads float8
        tok = _MetaTokenizer()
        tes = m.text_encoders or [None, None]
        self.models = sdxl.SDXLComponents(
            unet=m.unet, text_encoder=tes[0], text_encoder_2=tes[1], vae=m.vae,
            tokenizer=tok, tokenizer_2=tok,
        )  # fmt: skip
        self.tokenizers, self.te_id = (tok, tok), "memsim"
        self.noise_scheduler = DDPMScheduler.from_config(sdxl.sdxl_config("scheduler"))
        ns = _Namespace
        # The default base and training options (Trainer.loss_step reads every one).
        self.recipe = ns(base=Base(path="memsim"), train=Train(steps=1))
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

        from lorafile.runtime.train import cache

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
        from lorafile.runtime.train import data
        from lorafile.runtime.train.loop import Trainer

        batch = [data.Sample(0) for _ in range(self.s.batch)]
        return Trainer.loss_step(self, 0, 0, batch)

    def conditioning(self, epoch: int, index: int, batch):
        from lorafile.runtime.train.loop import Trainer

        return Trainer.conditioning(self, epoch, index, batch)


class _Namespace:
    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


class _HostTextCache:
    """The text cache's entries (fp32, on the host, as `cache.fill_text` stores them)."""

    def get(self, _key: str) -> dict[str, Any]:
        import torch

        return {"embeds": torch.zeros(77, 2048), "pooled": torch.zeros(1280)}


def _trace_forward_backward(s: SimSettings, m: MetaModels, tracker: MemoryTracker) -> list:
    """One micro-batch through the trainer's loss and backward; returns the gradients."""
    dtype = None if s.precision == "no" else _dtype(s.precision)
    autocast_in_checkpoints([m.unet, *m.text_encoders], lambda: autocast_mode_class()(dtype))
    for p in m.trainable:
        p.register_post_accumulate_grad_hook(lambda p: tracker.add(p.grad, "gradients"))
    trainer = _TraceTrainer(s, m, lambda: autocast_mode_class()(dtype))
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
    flops: dict[str, int]


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
    hooks = module_hooks(tracker, m.names)
    try:
        with torch.random.fork_rng(devices=[]), dispatch_mode_class()(tracker):
            grads = _trace_forward_backward(s, m, tracker)
    finally:
        for h in hooks:
            h.remove()
    tracker.refresh_snapshot()
    for p in m.trainable:
        p.grad = None
    trace = _ForwardBackward(m, grads, resident, tracker.peak, tracker.snapshot,
                             dict(tracker.phase_peaks), dict(tracker.flops))  # fmt: skip
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
        with dispatch_mode_class()(tracker):
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
    start, cpu = time.perf_counter(), time.process_time()
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
    peak = max(fb.peak + state, opt_tracker.peak)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return SimResult(s, peak, snapshot, phases, resident, wall, note, cpu, dict(fb.flops))


# --- Report ------------------------------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / 2**30:6.2f} GiB"


def render_text(result: SimResult, analytic: int | None = None) -> str:
    """The `lint --exact` section: peak, what holds it, the largest tensors, the phases."""
    s, snap = result.settings, result.snapshot
    lines = [
        f"exact simulation (full-size SDXL traced on the meta device, {result.cpu_seconds:.0f} s "
        f"CPU, {result.seconds:.0f} s wall): "
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
    if result.flops:
        lines.append(_compute_line(result))
    if result.note:
        lines.append(f"  note: {result.note}")
    return "\n".join(lines) + "\n"


def _compute_line(result: SimResult) -> str:
    f, gc = result.flops or {}, result.settings.checkpointing
    return (
        f"  compute: {result.total_flops / 1e12:.1f} TFLOP per micro-batch (forward "
        f"{f['forward'] / 1e12:.1f}, backward {f['backward'] / 1e12:.1f}"
        f"{' with recomputation' if gc else ''}; matmuls, convolutions and "
        "attention as torch.utils.flop_counter counts them)"
    )


def exact_report(recipe: Any) -> tuple[str, dict[str, Any]]:
    """Simulate `recipe` and return (text, json) for `lorafile lint --exact`."""
    result = simulate(recipe)
    analytic = None
    try:
        from lorafile.compiler import vram

        est = vram.estimate(recipe)
        analytic = est.step_allocated
    except Exception:  # the comparison is informative; the simulation stands on its own
        analytic = None
    data = result.to_dict()
    data["analytic_allocated_bytes"] = analytic
    return render_text(result, analytic), data
