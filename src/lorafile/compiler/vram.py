"""The analytic peak-VRAM model of SDXL LoRA training (docs/vram.md explains every term).

peak = max over the phases of a run (the training step, VAE encoding, sampling, saving) of

    frozen UNet + text encoders + VAE          (parameter counts x dtype, when on the GPU)
  + adapter weights + gradients + optimizer    (exact per-tensor counts from the SDXL shapes)
  + activations + attention workspace          (saved tensors per token, at the largest bucket)
  + CUDA context and allocator overhead        (a constant plus a fraction of the rest)

Parameter counts come from the SDXL architecture (the tables below reproduce the published
totals exactly; tests/compiler/test_vram_shapes.py checks them against diffusers on the meta device).
The activation term is an element count of what autograd saves (vram_perf.md §4.2) and is the
one estimate in the model; the overhead constants are fitted to the published anchors
(SimpleTuner H100 6.53/13.03 GiB, kohya fp8 4.4 GB). What each trainer keeps on the GPU is in
one table, `TRAINERS`. Pure arithmetic: nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from lorafile.spec import Recipe

GIB = 2**30
GB = 10**9

# ==== 1. Base model parameter counts ============================================================
# Public SDXL base 1.0 totals (vram_perf.md §2.1); UNet and VAE match the architecture exactly.
UNET_PARAMS = 2_567_463_684
CLIP_L_PARAMS = 123_060_480
OPENCLIP_BIGG_PARAMS = 694_659_840
TEXT_ENCODER_PARAMS = CLIP_L_PARAMS + OPENCLIP_BIGG_PARAMS
VAE_PARAMS = 83_653_863

DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "nf4": 0.5}

# ==== 2. Adaptable module shapes ================================================================
# (group, in_features, out_features, kernel, count). Groups map to recipe targets below.
# UNet: channels (320, 640, 1280), transformer depth (0, 2, 10) => 10 BasicTransformerBlocks at
# 640 and 60 at 1280; cross-attention dim 2048; GEGLU ff (C -> 8C, 4C -> C); linear proj_in/out
# in 5 Transformer2DModels at 640 and 6 at 1280.
UNET_MODULES: tuple[tuple[str, int, int, int, int], ...] = (
    # attn1 q,k,v,out + attn2 q,out (C -> C); attn2 k,v (2048 -> C); proj_in/proj_out (C -> C)
    ("attention", 640, 640, 1, 60),
    ("attention", 2048, 640, 1, 20),
    ("attention", 1280, 1280, 1, 360),
    ("attention", 2048, 1280, 1, 120),
    ("attention", 640, 640, 1, 10),
    ("attention", 1280, 1280, 1, 12),
    # GEGLU feed-forward
    ("ff", 640, 5120, 1, 10),
    ("ff", 2560, 640, 1, 10),
    ("ff", 1280, 10240, 1, 60),
    ("ff", 5120, 1280, 1, 60),
    # ResnetBlock2D time_emb_proj (Linear) and 1x1 conv_shortcut: adapted at the linear rank
    ("conv", 1280, 320, 1, 5),
    ("conv", 1280, 640, 1, 5),
    ("conv", 1280, 1280, 1, 7),
    ("conv", 320, 640, 1, 1),
    ("conv", 640, 1280, 1, 1),
    ("conv", 2560, 1280, 1, 2),
    ("conv", 1920, 1280, 1, 1),
    ("conv", 1920, 640, 1, 1),
    ("conv", 1280, 640, 1, 1),
    ("conv", 960, 640, 1, 1),
    ("conv", 960, 320, 1, 1),
    ("conv", 640, 320, 1, 2),
    # 3x3 convs: resnet conv1/conv2 and the 2 down- and 2 upsamplers, at the conv rank
    ("conv", 320, 320, 3, 2 + 5 + 1),
    ("conv", 320, 640, 3, 1),
    ("conv", 640, 640, 3, 1 + 5 + 2),
    ("conv", 640, 1280, 3, 1),
    ("conv", 1280, 1280, 3, 3 + 7 + 1),
    ("conv", 2560, 1280, 3, 2),
    ("conv", 1920, 1280, 3, 1),
    ("conv", 1920, 640, 3, 1),
    ("conv", 1280, 640, 3, 1),
    ("conv", 960, 640, 3, 1),
    ("conv", 960, 320, 3, 1),
    ("conv", 640, 320, 3, 2),
)
# CLIPAttention q,k,v,out and CLIPMLP fc1/fc2: CLIP-L (12 layers, 768) and bigG (32 layers, 1280).
TEXT_ENCODER_MODULES: tuple[tuple[str, int, int, int, int], ...] = (
    ("te1", 768, 768, 1, 48),
    ("te1", 768, 3072, 1, 12),
    ("te1", 3072, 768, 1, 12),
    ("te2", 1280, 1280, 1, 128),
    ("te2", 1280, 5120, 1, 32),
    ("te2", 5120, 1280, 1, 32),
)

Shape = tuple[int, ...]


def lokr_split(dim: int, factor: int | None) -> tuple[int, int]:
    """LyCORIS' Kronecker split of `dim` into (m, n), m * n = dim (`factorization` in
    lycoris/functional, the same in peft's LoKr): a factor that divides dim gives
    (factor, dim / factor) as it is; otherwise m climbs through the divisors of dim while it
    stays below n and at most the factor (no factor: up to the square root), and the smaller
    side comes first."""
    if factor is not None and factor > 0 and dim % factor == 0:
        return factor, dim // factor
    limit = factor if factor is not None and factor > 0 else dim
    m, n = 1, dim
    while m < n:
        bigger = next(d for d in range(m + 1, dim + 1) if dim % d == 0)
        if bigger > limit:
            break
        m, n = bigger, dim // bigger
    return (m, n) if m <= n else (n, m)


def lokr_tensors(fan_in: int, fan_out: int, kernel: int, rank: int, factor) -> list[Shape]:
    """LoKr's factors: w1 (out_l, in_m) always full (no `decompose_both`); w2 (out_k, in_n[, k,
    k]) full when rank >= half its larger side, else w2_a (out_k, r) @ w2_b (r, in_n*k*k)."""
    out_l, out_k = lokr_split(fan_out, factor)
    in_m, in_n = lokr_split(fan_in, factor)
    spatial = (kernel, kernel) if kernel > 1 else ()
    if rank >= max(out_k, in_n) / 2:
        return [(out_l, in_m), (out_k, in_n, *spatial)]
    return [(out_l, in_m), (out_k, rank), (rank, in_n * kernel * kernel)]


def module_tensors(
    algo: str, fan_in: int, fan_out: int, kernel: int, rank: int, factor=None, dora=False
) -> list[Shape]:
    """The trainable tensors one adapted module adds (alpha is a buffer, not counted).

    LoRA/LoCon: down (r, in[, k, k]) and up (out, r[, 1, 1]) - kohya `networks/lora.py` and
    LyCORIS `locon.py` use the same shapes. LoHa: two Hadamard factor pairs
    (out, r) x (r, in*k*k) (LyCORIS `loha.py`, without Tucker decomposition). LoKr: see
    `lokr_tensors`. DoRA adds a magnitude per output channel (peft `lora_magnitude_vector`).
    """
    if algo == "loha":
        return [(fan_out, rank), (rank, fan_in * kernel * kernel)] * 2
    if algo == "lokr":
        return lokr_tensors(fan_in, fan_out, kernel, rank, factor)
    magnitude: list[Shape] = [(fan_out,)] if dora else []
    if kernel == 1:
        return [(rank, fan_in), (fan_out, rank), *magnitude]
    return [(rank, fan_in, kernel, kernel), (fan_out, rank, 1, 1), *magnitude]


def adapter_tensors(recipe: Recipe) -> list[tuple[Shape, int]]:
    """Every trainable adapter tensor shape with its multiplicity, for the recipe's adapter."""
    adapter = recipe.adapter
    out: list[tuple[Shape, int]] = []
    for group, fan_in, fan_out, kernel, count in UNET_MODULES:
        if group not in adapter.targets:
            continue
        rank = adapter.effective_conv_rank if kernel == 3 else adapter.rank
        shapes = module_tensors(
            adapter.algo, fan_in, fan_out, kernel, rank, adapter.factor, adapter.dora
        )
        out += [(s, count) for s in shapes]
    if adapter.text_encoder:
        for _, fan_in, fan_out, kernel, count in TEXT_ENCODER_MODULES:
            tensors = module_tensors(
                adapter.algo, fan_in, fan_out, kernel, adapter.rank, adapter.factor, adapter.dora
            )
            out += [(s, count) for s in tensors]
    return out


def adapter_params(recipe: Recipe) -> int:
    """Exact trainable adapter parameter count (e.g. 2,659,840 x rank for attention + ff)."""
    return sum(math.prod(shape) * count for shape, count in adapter_tensors(recipe))


def adapter_modules(recipe: Recipe) -> int:
    """Number of adapted modules (kohya logs 722 for attention + ff, 264 for the TEs)."""
    unet = sum(c for g, *_, c in UNET_MODULES if g in recipe.adapter.targets)
    return unet + (264 if recipe.adapter.text_encoder else 0)


# ==== 3. Optimizer state ========================================================================
# bitsandbytes keeps tensors below `min_8bit_size` (4096 elements) in 32-bit state.
MIN_8BIT_SIZE = 4096


def optimizer_state_bytes(
    optimizer: str, shapes: list[tuple[Shape, int]], state_bytes: float, args: dict | None = None
) -> float:
    """Optimizer state for the given tensors. `state_bytes` is the element size of full-precision
    state, which follows the parameter dtype in torch optimizers (fp32 master: 4)."""
    total = 0.0
    for shape, count in shapes:
        total += count * _tensor_state(optimizer, shape, state_bytes, args or {})
    return total


def _tensor_state(optimizer: str, shape: Shape, state_bytes: float, args: dict) -> float:
    n = math.prod(shape)
    if optimizer == "adamw":  # exp_avg, exp_avg_sq
        return 2 * n * state_bytes
    if optimizer == "adamw8bit":  # two 8-bit states; small tensors stay fp32
        return 2 * n * (4 if n < MIN_8BIT_SIZE else 1)
    if optimizer == "lion":  # exp_avg only
        return n * state_bytes
    if optimizer == "lion8bit":
        return n * (4 if n < MIN_8BIT_SIZE else 1)
    if optimizer == "prodigy":  # s, p0, exp_avg, exp_avg_sq (prodigyopt source)
        return 4 * n * state_bytes
    if optimizer == "adafactor":  # factored second moment over the last two dims, no momentum
        if len(shape) < 2:
            return n * state_bytes
        rows = math.prod(shape[:-1])
        cols = math.prod(shape[:-2]) * shape[-1]
        return (rows + cols) * state_bytes
    if optimizer == "sgd":  # momentum buffer only when momentum is set
        return n * state_bytes if float(args.get("momentum", 0) or 0) > 0 else 0.0
    raise ValueError(f"unknown optimizer {optimizer!r}")


# ==== 4. Activations ============================================================================
# Per-token saved elements (vram_perf.md §4.2): BasicTransformerBlock 31*C with LoRA on the
# attention projections, +5*C when the feed-forward is adapted too (the LayerNorm output feeding
# ff.net.0 and the 4*C GEGLU product feeding ff.net.2 are kept only for the LoRA's weight
# gradient); Transformer2DModel wrapper 5*C; ResnetBlock2D 3*C_in + 3*C_out. The block
# coefficients are the §4.2 count (30*C) refined against a traced allocation of the native
# trainer (runtime/memory/simulate.py: 31.2*C attention-only, 36.5*C attention + ff, per block at 1280).
BLOCK_ELEMENTS = 31
FF_LORA_ELEMENTS = 5
CHANNELS = (320, 640, 1280)
BLOCKS = {1: 10, 2: 60}  # BasicTransformerBlocks per level
WRAPPERS = {1: 5, 2: 6}  # Transformer2DModels per level
RESNETS = (  # (level, C_in, C_out): down, mid, up
    (0, 320, 320), (0, 320, 320), (1, 320, 640), (1, 640, 640), (2, 640, 1280), (2, 1280, 1280),
    (2, 1280, 1280), (2, 1280, 1280),
    (2, 2560, 1280), (2, 2560, 1280), (2, 1920, 1280), (1, 1920, 640), (1, 1280, 640),
    (1, 960, 640), (0, 960, 320), (0, 640, 320), (0, 640, 320),
)  # fmt: skip
SAMPLERS = ((0, 320), (1, 640), (1, 1280), (0, 640))  # conv inputs of down/upsamplers
HEAD_DIM = 64
TEXT_TOKENS = 77


def level_tokens(width: int, height: int) -> tuple[int, int, int]:
    """Tokens per UNet level for an image of width x height pixels (latent = pixels / 8)."""
    lw, lh = max(1, width // 8), max(1, height // 8)
    return tuple(max(1, lw >> lv) * max(1, lh >> lv) for lv in range(3))  # type: ignore[return-value]


def unet_saved_elements(width: int, height: int, checkpointing: bool, ff_lora: bool = True) -> int:
    """Elements autograd keeps per image for one UNet forward (SDPA-style attention).

    Without checkpointing every block's internals are saved. With kohya/diffusers per-block
    checkpointing only each checkpointed module's input, the (not checkpointed) Transformer2DModel
    wrappers, and one block being recomputed at a time stay alive.
    """
    t = level_tokens(width, height)
    per_block = BLOCK_ELEMENTS + (FF_LORA_ELEMENTS if ff_lora else 0)
    blocks = [
        (lv, per_block * CHANNELS[lv] * t[lv], CHANNELS[lv] * t[lv])
        for lv in BLOCKS
        for _ in range(BLOCKS[lv])
    ]
    blocks += [(lv, 3 * (ci + co) * t[lv], ci * t[lv]) for lv, ci, co in RESNETS]
    wrappers = sum(n * 5 * CHANNELS[lv] * t[lv] for lv, n in WRAPPERS.items())
    fixed = wrappers + sum(c * t[lv] for lv, c in SAMPLERS) + 3 * CHANNELS[0] * t[0]
    if not checkpointing:
        return fixed + sum(full for _, full, _ in blocks)
    return fixed + sum(inp for _, _, inp in blocks) + max(full for _, full, _ in blocks)


# DoRA (peft `use_dora`) keeps each adapted layer's base output for the magnitude's gradient:
# per transformer block, attn1 q/k/v/out and attn2 q/out (6C) plus the GEGLU ff outputs (8C + C).
DORA_ATTENTION_OUTPUTS, DORA_FF_OUTPUTS = 6, 9


def dora_saved_elements(width: int, height: int, checkpointing: bool, targets) -> int:
    """Extra elements DoRA keeps per image: the adapted layers' outputs. With checkpointing
    only the block being recomputed holds them."""
    t = level_tokens(width, height)
    per_c = (DORA_ATTENTION_OUTPUTS if "attention" in targets else 0) + (
        DORA_FF_OUTPUTS if "ff" in targets else 0
    )
    blocks = [per_c * CHANNELS[lv] * t[lv] for lv in BLOCKS for _ in range(BLOCKS[lv])]
    if "conv" in targets:  # conv1/conv2 outputs of each ResnetBlock2D
        blocks += [2 * co * t[lv] for lv, _, co in RESNETS]
    if not blocks:
        return 0
    return max(blocks) if checkpointing else sum(blocks)


def naive_attention_elements(width: int, height: int, checkpointing: bool) -> int:
    """Softmax probabilities plain (non-SDPA) attention keeps for backward, per image."""
    t = level_tokens(width, height)
    per_block = {lv: (CHANNELS[lv] // HEAD_DIM) * t[lv] * (t[lv] + TEXT_TOKENS) for lv in BLOCKS}
    if checkpointing:
        return max(per_block.values())
    return sum(BLOCKS[lv] * per_block[lv] for lv in BLOCKS)


def text_encoder_saved_elements(checkpointing: bool) -> int:
    """Per caption, when the text encoders are trained: ~20 elements per hidden unit per token
    per layer without checkpointing (CLIP blocks: 4x MLP, no GEGLU), 2 with."""
    per_layer = 2 if checkpointing else 20
    return per_layer * TEXT_TOKENS * (12 * 768 + 32 * 1280)


def attention_workspace_elements(width: int, height: int, attention: str) -> int:
    """Transient of the largest single attention call, per image: the score and probability
    matrices for plain attention; for SDPA/xformers, the q/k/v gradients of the backward."""
    t = level_tokens(width, height)
    if attention == "naive":
        return max(2 * (CHANNELS[lv] // HEAD_DIM) * t[lv] * t[lv] for lv in BLOCKS)
    return max(4 * CHANNELS[lv] * t[lv] for lv in BLOCKS)


# VAE transients (inference, no autograd) [est]: ~3 live tensors of 128 (encoder) / 256
# (decoder) channels at full resolution.
def vae_encode_elements(width: int, height: int) -> int:
    return 3 * 128 * width * height


TILE_PIXELS = 512
"""The native trainer's decode tile (runtime/train/sampling.py TILE_PIXELS; a test keeps them equal)."""


def vae_decode_elements(width: int, height: int) -> int:
    return 3 * 256 * width * height


# ==== 5. Overhead ===============================================================================
# CUDA context, cuBLAS/cuDNN workspaces and the reserved-vs-allocated gap. Fitted to the
# SimpleTuner H100 anchors (docs/vram.md §Calibration).
CUDA_CONTEXT_BYTES = 500 * 2**20
FRAGMENTATION = 0.08


# ==== 6. Trainers: what each keeps on the GPU (the ONE per-trainer table) =======================
@dataclass(frozen=True)
class TrainerProfile:
    """What a trainer does by default that changes memory. See docs/vram.md §Trainers."""

    name: str
    caches_latents: bool
    """Always encodes latents once and keeps the VAE off the GPU while training."""
    caches_text: bool
    """Always caches text-encoder outputs when the text encoders are frozen."""
    attention: str
    """Attention implementation used when nothing else is configured."""
    adapter_dtype: str
    """`fp32` master weights, or `precision` (the mixed-precision dtype, pure bf16 training)."""
    sample_loads_text_encoders: bool
    """Sampling brings the text encoders (back) onto the GPU to encode prompts."""
    fp8_activation_factor: float
    """Activation multiplier when the base is fp8 (torchao float8 saves casted copies)."""
    note: str = ""
    encodes_in_step: bool = False
    """Uncached latents are encoded inside the training step, one image at a time, under the
    step's autocast, with an fp32 VAE (lorafile's trainer); otherwise in a phase of their own."""
    decodes_in_tiles: bool = False
    """Samples are decoded in TILE_PIXELS tiles when a whole decode does not fit."""


TRAINERS: dict[str, TrainerProfile] = {
    # sd-scripts: caches only what the config asks (--cache_latents, --cache_text_encoder_outputs)
    # and then moves the VAE/TEs to the CPU (sdxl_train_network.py); lorafile writes --sdpa, a
    # config without --sdpa/--xformers uses plain attention; network weights fp32 unless
    # --full_bf16; sample_images moves the TEs and VAE back to the GPU; --fp8_base is storage-only.
    "kohya": TrainerProfile("kohya", False, False, "sdpa", "fp32", True, 1.0,
                            "fp8_base stores weights in fp8 and computes in bf16"),
    # SimpleTuner: always builds the VAE latent cache and the text-embed cache, validates from
    # cached prompt embeds; diffusers AttnProcessor2_0 (SDPA); adamw_bf16 keeps LoRA weights and
    # states in bf16; fp8 runs through torchao, which doubled activations (SEGMENTED_CHECKPOINTING).
    "simpletuner": TrainerProfile("simpletuner", True, True, "sdpa", "precision", False, 2.0,
                                  "caches latents and text embeds always"),
    # lorafile's own trainer: caches what the recipe says, SDPA, fp32 adapter master weights,
    # sample prompts are encoded once before training; the VAE stays fp32 (Trainer._load_models)
    # and uncached latents are encoded in the step (Trainer.latents).
    "native": TrainerProfile("native", False, False, "sdpa", "fp32", False, 1.0,
                             encodes_in_step=True, decodes_in_tiles=True),
}  # fmt: skip


# ==== 7. The estimate ===========================================================================
@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class Setup:
    """Everything the estimate depends on besides the recipe itself."""

    trainer: str = "native"
    attention: str | None = None
    gpus: int | None = None
    adapter_dtype: str | None = None
    vae_fp32: bool = False
    base_dtype: str | None = None


@dataclass(frozen=True)
class Estimate:
    """Peak-memory estimate: the training-step components plus the other phases' peaks."""

    trainer: str
    components: tuple[Component, ...]
    phases: tuple[Component, ...] = ()
    """Whole-run peaks of other phases (VAE encode, sampling, saving), overhead included."""
    adapter_params: int = 0
    bucket: tuple[int, int] = (1024, 1024)
    batch: int = 1
    step_allocated: int = 0
    """Tensor bytes at the training step's peak, as torch.cuda.max_memory_allocated counts
    them (no CUDA context or allocator overhead): what `lint --exact` traces. For a trainer
    that encodes latents in the step this includes the encoding's transient."""

    @property
    def step_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def total_bytes(self) -> int:
        return max([self.step_bytes] + [p.bytes for p in self.phases])

    @property
    def peak_phase(self) -> str:
        worst = max(self.phases, key=lambda p: p.bytes, default=None)
        return worst.name if worst and worst.bytes > self.step_bytes else "training step"

    def component(self, name: str) -> int:
        return next(c.bytes for c in self.components if c.name == name)

    @property
    def dominant(self) -> Component:
        return max(self.components, key=lambda c: c.bytes)


def setup_for(recipe: Recipe, trainer: str = "native", **overrides) -> Setup:
    """The Setup of a recipe for a trainer, reading trainer options kept in passthrough."""
    kohya = recipe.passthrough.get("kohya", {}) if trainer == "kohya" else {}
    st = recipe.passthrough.get("simpletuner", {}) if trainer == "simpletuner" else {}
    attention = None
    if kohya.get("xformers") or kohya.get("sdpa") or kohya.get("mem_eff_attn"):
        attention = "sdpa"
    elif kohya.get("sdpa") is False:
        # The kohya importer keeps `sdpa = false` when a config turns on no attention kernel:
        # sd-scripts then runs plain attention.
        attention = "naive"
    adapter_dtype = "precision" if kohya.get("full_bf16") or kohya.get("full_fp16") else None
    base = str(st.get("base_model_precision", "")).split("-")[0]
    setup = Setup(
        trainer=trainer,
        attention=attention,
        adapter_dtype=adapter_dtype,
        vae_fp32=bool(kohya.get("no_half_vae")),
        base_dtype=base if base in DTYPE_BYTES else None,
    )
    return replace(setup, **overrides)


def estimate(recipe: Recipe, trainer: str = "native", setup: Setup | None = None) -> Estimate:
    """Estimate the peak VRAM per GPU of training `recipe` with `trainer`.

    `auto` settings are resolved first against the recipe's own hardware budget (callers with
    another budget, such as `lint --vram`, resolve them before: `resolve_auto`)."""
    setup = setup or setup_for(recipe, trainer)
    if has_auto(recipe):
        recipe, _ = resolve_auto(recipe, hardware_budget(recipe), setup=setup)
    return _Model(recipe, setup).estimate()


class _Model:
    """One evaluation of the model; each method is one term of the sum."""

    def __init__(self, recipe: Recipe, setup: Setup):
        self.r, self.s = recipe, setup
        self.p = TRAINERS[setup.trainer]
        train = recipe.train
        self.compute = 4.0 if train.precision == "no" else 2.0
        self.base_dtype = setup.base_dtype or train.effective_base_precision
        self.base = DTYPE_BYTES[self.base_dtype]
        self.attention = setup.attention or self.p.attention
        self.width, self.height = largest_bucket(recipe)
        self.batch = train.batch
        self.gpus = setup.gpus or recipe.hardware.gpus
        te = recipe.adapter.text_encoder
        self.cache_text = (train.cache.text or self.p.caches_text) and not te
        self.cache_latents = train.cache.latents or self.p.caches_latents
        dtype = setup.adapter_dtype or self.p.adapter_dtype
        self.adapter_bytes = self.compute if dtype == "precision" else 4.0
        vae_fp32 = setup.vae_fp32 or self.p.encodes_in_step or train.precision == "no"
        self.vae_bytes = 4.0 if vae_fp32 else 2.0

    def estimate(self) -> Estimate:
        tensors = adapter_tensors(self.r)
        params = sum(math.prod(s) * c for s, c in tensors)
        static = self._static(params, tensors)
        step = [
            *static,
            Component("gradients", int(self._gradients(params))),
            Component("activations", int(self._activations()), self._bucket_note()),
            Component("attention workspace", int(self._workspace()), self.attention),
        ]
        step.append(Component("CUDA context and allocator overhead", self._overhead(step)))
        return Estimate(
            trainer=self.s.trainer,
            components=tuple(step),
            phases=tuple(self._phases(static, params)),
            adapter_params=params,
            bucket=(self.width, self.height),
            batch=self.batch,
            step_allocated=int(self._step_allocated(step[:-1], static)),
        )

    def _static(self, params: int, tensors) -> list[Component]:
        te_on_gpu = not self.cache_text
        optimizer = optimizer_state_bytes(
            self.r.train.optimizer, tensors, self.adapter_bytes, self.r.train.optimizer_args
        )
        return [
            Component("frozen UNet weights", int(UNET_PARAMS * self.base)),
            Component("text encoders", int(TEXT_ENCODER_PARAMS * self.base) if te_on_gpu else 0,
                      "on the GPU" if te_on_gpu else "outputs cached, moved off the GPU"),
            Component("VAE", 0 if self.cache_latents else int(VAE_PARAMS * self.vae_bytes),
                      "latents cached, moved off the GPU" if self.cache_latents else "encodes every step"),
            Component("adapter weights", int(params * self.adapter_bytes), f"{params:,} parameters"),
            Component("optimizer state", int(optimizer), self.r.train.optimizer),
            *self._ema(params),
        ]  # fmt: skip

    def _ema(self, params: int) -> list[Component]:
        """The native trainer keeps the `ema` average as an fp32 copy beside the adapter;
        SimpleTuner keeps its copy on the CPU (`ema_device` cpu, its default), kohya has none."""
        if self.r.ema is None or self.s.trainer != "native":
            return []
        return [Component("EMA of the adapter", int(params * 4.0), "fp32 shadow")]

    def _gradients(self, params: int) -> float:
        grads = params * self.adapter_bytes
        # DDP allocates gradient buckets as large as the gradients (torch DistributedDataParallel).
        return grads * 2 if self.gpus > 1 else grads

    def _activations(self) -> float:
        gc = self.r.train.checkpointing
        ff_lora = "ff" in self.r.adapter.targets
        elements = unet_saved_elements(self.width, self.height, gc, ff_lora)
        if self.attention == "naive":
            elements += naive_attention_elements(self.width, self.height, gc)
        if self.base_dtype == "fp8":
            elements *= self.p.fp8_activation_factor
        if self.r.adapter.dora:
            elements += dora_saved_elements(self.width, self.height, gc, self.r.adapter.targets)
        if self.r.adapter.text_encoder:
            elements += text_encoder_saved_elements(gc)
        return elements * self.batch * self.compute

    def _workspace(self) -> float:
        elements = attention_workspace_elements(self.width, self.height, self.attention)
        return elements * self.batch * self.compute

    def _bucket_note(self) -> str:
        return f"{self.width}x{self.height}, batch {self.batch}"

    def _vae_encode_bytes(self) -> float:
        """The VAE encoder's transient at the largest bucket."""
        if not self.p.encodes_in_step:
            return vae_encode_elements(self.width, self.height) * self.batch * self.vae_bytes
        # Traced (runtime/memory/simulate.py, 2026-11-28; 512² fp32, 768² fp16, 1024² bf16 all agree):
        # five live 128-channel full-resolution tensors, one image at a time; under autocast
        # the group norms run in fp32, so two of the five are fp32 and three in the compute dtype.
        per_channel = 5 * 4.0 if self.compute == 4.0 else 3 * self.compute + 2 * 4.0
        return 128 * self.width * self.height * per_channel

    def _step_allocated(self, step: list[Component], static: list[Component]) -> float:
        allocated = sum(c.bytes for c in step)
        if self.cache_latents or not self.p.encodes_in_step:
            return allocated
        return max(allocated, sum(c.bytes for c in static) + self._vae_encode_bytes())

    def _phases(self, static: list[Component], params: int) -> list[Component]:
        resident = sum(c.bytes for c in static)
        phases = []
        if not self.cache_latents:
            phases.append(_phase("VAE encode", resident + self._vae_encode_bytes()))
        size = sample_size(self.r, self.s.trainer)
        if size is not None:
            phases.append(_phase("sampling", resident + self._sampling_extra(*size)))
        save_bytes = DTYPE_BYTES[self.r.save.precision]
        phases.append(_phase("saving", resident + params * save_bytes))
        return phases

    def _sampling_extra(self, width: int, height: int) -> float:
        extra = self._vae_decode_bytes(width, height)
        if self.cache_latents:
            extra += VAE_PARAMS * self.vae_bytes
        if self.cache_text and self.p.sample_loads_text_encoders:
            extra += TEXT_ENCODER_PARAMS * self.base
        # UNet inference with classifier-free guidance (batch 2): a few live GEGLU outputs.
        tokens = level_tokens(width, height)
        extra += 2 * 3 * 8 * CHANNELS[1] * tokens[1] * self.compute
        return extra

    def _vae_decode_bytes(self, width: int, height: int) -> float:
        """The decoder's transient. lorafile's trainer decodes in 512-pixel tiles when a whole
        decode does not fit (runtime/train/sampling.py `decode`), so it needs only a tile's (traced:
        0.76 GiB fp32 at 1024², against 3.00 GiB whole) plus the full-size output image."""
        if not self.p.decodes_in_tiles:  # kohya and SimpleTuner decode whole
            return vae_decode_elements(width, height) * self.vae_bytes
        tile = vae_decode_elements(min(width, TILE_PIXELS), min(height, TILE_PIXELS))
        return (tile + 3 * width * height) * self.vae_bytes

    @staticmethod
    def _overhead(parts: list[Component]) -> int:
        allocated = sum(c.bytes for c in parts)
        return int(CUDA_CONTEXT_BYTES + FRAGMENTATION * allocated)


def _phase(name: str, allocated: float) -> Component:
    return Component(name, int(allocated + CUDA_CONTEXT_BYTES + FRAGMENTATION * allocated))


KOHYA_SAMPLE_KEYS = ("sample_every_n_steps", "sample_every_n_epochs")


def sample_size(recipe: Recipe, trainer: str) -> tuple[int, int] | None:
    """The size previews are generated at, or None without sampling. A kohya config whose
    prompt file could not be read still samples: at 512x512 unless its lines say --w/--h."""
    if recipe.sample is not None:
        return recipe.sample.size.width, recipe.sample.size.height
    kohya = recipe.passthrough.get("kohya", {}) if trainer == "kohya" else {}
    if any(kohya.get(k) for k in KOHYA_SAMPLE_KEYS) and kohya.get("sample_prompts"):
        return 512, 512
    return None


def largest_bucket(recipe: Recipe) -> tuple[int, int]:
    """The largest training image in pixels: buckets never exceed the dataset's resolution area
    (kohya and SimpleTuner choose bucket sizes at the target area), so it is the resolution."""
    best = max(recipe.datasets, key=lambda d: d.resolution.pixels)
    return best.resolution.width, best.resolution.height


def gib(n: float) -> float:
    return n / GIB


# ==== 8. `auto` memory measures =================================================================
MARGIN = 0.05
"""The share of the budget kept free (allocator fragmentation): the lint's "close to the
budget" warning and `checkpointing auto` use the same margin."""


@dataclass(frozen=True)
class AutoChoice:
    """What an `auto` setting became, and why (printed by `plan`, info diagnostics in compile)."""

    setting: str
    value: bool | str
    """True/False, or "auto" while it is left to the trainer's start (no budget, no device)."""
    reason: str

    def line(self) -> str:
        if self.value == "auto":
            return f"{self.setting} auto: {self.reason}"
        return f"{self.setting} auto -> {'on' if self.value else 'off'}: {self.reason}"


def choice_for(choices: list[AutoChoice], setting: str) -> AutoChoice:
    """The choice `resolve_auto` made for `setting` (by name: the list's order is not a rule)."""
    return next(c for c in choices if c.setting == setting)


def has_auto(recipe: Recipe) -> bool:
    return recipe.train.checkpointing == "auto" or recipe.train.cache.is_auto


def hardware_budget(recipe: Recipe) -> int | None:
    """The recipe's own memory budget per GPU: `vram`, else the named GPU's size, else None."""
    from lorafile.spec import gpus

    hw = recipe.hardware
    if hw.vram:
        return hw.vram
    found = gpus.find(hw.gpu) if hw.gpu else None
    return found.budget_bytes if found else None


def exact_caches(recipe: Recipe) -> tuple[tuple[bool, str], tuple[bool, str]]:
    """(cache latents?, why), (cache text?, why): a cache is used whenever it changes nothing.

    Flips stay exact (both orientations are cached, as kohya does); color augmentation changes
    the pixels every step; trained text encoders, caption shuffling and caption dropout change
    the text-encoder outputs every step."""
    if any(d.color_aug for d in recipe.datasets):
        latents = (False, "color augmentation changes the pixels every step")
    else:
        latents = (True, "exact: no color augmentation")
    if recipe.adapter.text_encoder:
        text = (False, "the text encoders are trained")
    elif any(d.shuffle_captions or d.caption_dropout > 0 for d in recipe.datasets):
        text = (False, "captions are shuffled or dropped every step")
    else:
        text = (True, "exact: frozen text encoders, fixed captions")
    return latents, text


def resolve_auto(
    recipe: Recipe,
    budget_bytes: int | None,
    trainer: str = "native",
    device: str | None = "cuda",
    setup: Setup | None = None,
) -> tuple[Recipe, list[AutoChoice]]:
    """The recipe with each `auto` memory measure chosen, and one AutoChoice per choice.

    Caches: on whenever exact (`exact_caches`). Checkpointing: never on a CPU; on only when
    the estimated peak without it exceeds the budget less MARGIN. Without a budget it is on
    for a GPU (the safe choice) and left `auto` for `device=None` (the native trainer decides
    at start from the GPU it runs on). Explicit on/off settings are never touched."""
    train, choices = recipe.train, []
    if train.cache.is_auto:
        (latents, why_l), (text, why_t) = exact_caches(recipe)
        choices += [AutoChoice("cache latents", latents, why_l)]
        choices += [AutoChoice("cache text", text, why_t)]
        cache = train.cache.model_copy(update={"latents": latents, "text": text})
        train = train.model_copy(update={"cache": cache})
    if train.checkpointing == "auto":
        value, why = _auto_checkpointing(
            recipe.model_copy(update={"train": train}), budget_bytes, trainer, device, setup
        )
        choices.append(AutoChoice("checkpointing", value, why))
        train = train.model_copy(update={"checkpointing": value})
    return recipe.model_copy(update={"train": train}), choices


def _auto_checkpointing(recipe, budget, trainer, device, setup) -> tuple[bool | str, str]:
    if device == "cpu":
        return False, "never on a CPU (it only slows the step there)"
    if budget is None:
        if device is None:
            return (
                "auto",
                "no GPU size in the recipe: chosen at start from the device (off on a CPU)",
            )
        return True, "no memory budget known: on, the safe choice (name the GPU in `hardware`)"
    off = recipe.model_copy(
        update={"train": recipe.train.model_copy(update={"checkpointing": False})}
    )
    peak = _Model(off, setup or setup_for(off, trainer)).estimate().total_bytes
    limit = budget * (1 - MARGIN)
    fits = peak <= limit
    verdict = "fits" if fits else "does not fit"
    why = (
        f"the step without it ({gib(peak):.2f} GiB) {verdict} the {gib(budget):.2f} GiB budget "
        f"less the {MARGIN:.0%} margin"
    )
    return (not fits), why
