"""The Recipe: lorafile's one semantic IR.

Every field is *semantics*, not any trainer's spelling (DESIGN.md). Readers build a Recipe,
writers consume one; the parser attaches source positions separately (see compiler/parse.py),
so these models stay plain data that compares by value.

Defaults are part of the language: an omitted statement means the default written here, and
docs/recipe.md lists the same values. Backends must write every value whose trainer default
differs from these.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Scalars a pass-through block may hold (TOML/JSON values a trainer accepts).
PassValue = str | int | float | bool | list[str | int | float | bool]

# Each choice is declared once as a Literal type; the tuples are for did-you-mean and docs.
Optimizer = Literal["adamw", "adamw8bit", "adafactor", "prodigy", "lion", "lion8bit", "sgd"]
Scheduler = Literal[
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
]
Sampler = Literal[
    "euler_a",
    "euler",
    "ddim",
    "ddpm",
    "pndm",
    "lms",
    "heun",
    "dpm_2",
    "dpm_2_a",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "dpmpp_sde",
    "unipc",
]
AdapterAlgo = Literal["lora", "locon", "loha", "lokr"]
Target = Literal["attention", "ff", "conv"]
DatasetKind = Literal["style", "character", "concept"]
Precision = Literal["no", "fp16", "bf16"]
BasePrecision = Literal["fp32", "bf16", "fp16", "fp8"]
SavePrecision = Literal["fp32", "fp16", "bf16"]
Logger = Literal["none", "tensorboard", "wandb"]
Layout = Literal["kohya", "diffusers"]
WeightVariant = Literal["fp16", "bf16"]
LossKind = Literal["l2", "huber", "smooth_l1"]
HuberSchedule = Literal["snr", "exponential", "constant"]
BiasStrategy = Literal["earlier", "later", "range"]

OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
ADAPTER_ALGOS: tuple[str, ...] = get_args(AdapterAlgo)
TARGETS: tuple[str, ...] = get_args(Target)
DATASET_KINDS: tuple[str, ...] = get_args(DatasetKind)
PRECISIONS: tuple[str, ...] = get_args(Precision)
BASE_PRECISIONS: tuple[str, ...] = get_args(BasePrecision)
SAVE_PRECISIONS: tuple[str, ...] = get_args(SavePrecision)
LOGGERS: tuple[str, ...] = get_args(Logger)
LAYOUTS: tuple[str, ...] = get_args(Layout)
WEIGHT_VARIANTS: tuple[str, ...] = get_args(WeightVariant)
LOSS_KINDS: tuple[str, ...] = get_args(LossKind)
HUBER_SCHEDULES: tuple[str, ...] = get_args(HuberSchedule)
BIAS_STRATEGIES: tuple[str, ...] = get_args(BiasStrategy)
NUM_TIMESTEPS = 1000
"""SDXL's training schedule length (timesteps 0..999)."""


class Spec(BaseModel):
    """Base for all recipe models: unknown fields are errors, values compare by content."""

    # allow_inf_nan=False: `inf` has no recipe spelling and is never a meaningful setting.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # No file name, path, command-line argument or C string can hold a NUL: a string
        # with one cannot be written anywhere it would mean the same (issue 12).
        if _holds_nul(value):
            raise PydanticCustomError(
                "nul_character", "a NUL character (\\0) cannot be part of a path, name or prompt"
            )
        return value


def _holds_nul(value: object) -> bool:
    # Runs for every field of every model built (a 10 MB config builds 10^6 of them): the
    # common cases first, without isinstance chains.
    kind = type(value)
    if kind is str:
        return "\0" in value
    if value is None or kind in _SCALARS or isinstance(value, BaseModel):
        return False  # a nested model checked its own fields
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, list | tuple):
        return any(map(_holds_nul, value))
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return False


_SCALARS = frozenset({int, float, bool})


def _file_stem(value: str | None) -> str | None:
    """A name used as a file name in the output folder must stay a plain name in it."""
    if value is None:
        return value
    if "/" in value or "\\" in value or value.strip() in (".", ".."):
        raise PydanticCustomError(
            "not_a_file_name",
            "`{name}` names a file outside the output folder, or no file",
            {"name": value},
        )
    return value


class Resolution(Spec):
    """A width x height in pixels; `1024` alone means 1024x1024."""

    width: Annotated[int, Field(ge=64, le=8192)]
    height: Annotated[int, Field(ge=64, le=8192)]

    @property
    def pixels(self) -> int:
        return self.width * self.height


class Interval(Spec):
    """`500 steps` or `2 epochs`."""

    every: PositiveInt
    unit: Literal["steps", "epochs"] = "steps"


class Base(Spec):
    """The model being adapted. Only the SDXL family for now (base 1.0 and its fine-tunes)."""

    family: Literal["sdxl"] = "sdxl"
    path: Annotated[str, Field(min_length=1)]
    """Single-file `.safetensors` (kohya/ComfyUI layout), a diffusers folder, or a Hugging Face
    Hub id (`org/name`, `org/name@revision`, `org/name/file.safetensors`; compiler/hub.py)."""
    vae: str | None = None
    """Optional replacement VAE (e.g. sdxl-vae-fp16-fix); default: the base model's own."""
    variant: WeightVariant | None = None
    """Load a diffusers model's `*.fp16.safetensors` weights where a part has them."""
    prediction: Literal["epsilon", "v"] = "epsilon"
    zero_terminal_snr: bool = False
    """Rescale the noise schedule so its last step is pure noise (Lin et al. 2024); what
    v-prediction fine-tunes such as NoobAI-XL v-pred were trained with."""
    clip_skip: Annotated[int, Field(ge=1, le=12)] | None = None
    """Which text-encoder layer from the end feeds the UNet; SDXL already uses the penultimate."""


class Buckets(Spec):
    """Aspect-ratio bucketing (kohya-style). Sizes in pixels."""

    enabled: bool = True
    min: Annotated[int, Field(ge=64, le=8192)] = 256
    max: Annotated[int, Field(ge=64, le=8192)] = 2048
    step: Annotated[int, Field(ge=8, le=512)] = 64
    upscale: bool = True
    """False: images smaller than a bucket are not upscaled into it (kohya bucket_no_upscale)."""

    @model_validator(mode="after")
    def _min_below_max(self) -> Buckets:
        if self.min > self.max:
            raise ValueError(f"bucket minimum {self.min} is larger than the maximum {self.max}")
        return self


class Dataset(Spec):
    """One folder of training images with their captions."""

    path: Annotated[str, Field(min_length=1)]
    kind: DatasetKind = "style"
    """Drives lint advice (learning rate, dataset size, regularization)."""
    captions: Annotated[str, Field(min_length=1)] = "txt"
    """`txt`, `caption` or any extension (a sidecar file per image), `filename` (the image's
    name is the caption), or `trigger` (no captions: the trigger alone)."""
    repeats: PositiveInt = 1
    """Each image is seen this many times per epoch."""
    resolution: Resolution = Resolution(width=1024, height=1024)
    buckets: Buckets = Buckets()
    flip: bool = False
    """Random horizontal flips; leave off for faces and text."""
    color_aug: bool = False
    shuffle_captions: bool = False
    """Shuffle comma-separated caption tags each step, keeping the first `keep_tokens`."""
    keep_tokens: Annotated[int, Field(ge=0, le=75)] = 0
    caption_dropout: Fraction = 0.0
    """Probability that a caption is replaced by the empty string for a step."""


class Regularization(Spec):
    """Class images for prior preservation (DreamBooth-style)."""

    path: Annotated[str, Field(min_length=1)]
    class_prompt: Annotated[str, Field(min_length=1)]
    ratio: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    """Regularization images per subject image per epoch (`1:1` is 1.0)."""
    weight: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    """Prior-loss weight against the subject loss."""


class Adapter(Spec):
    """The trained network: LoRA, or the LyCORIS variants LoCon, LoHa and LoKr."""

    algo: AdapterAlgo = "lora"
    rank: Annotated[int, Field(ge=1, le=1024)] = 16
    alpha: Annotated[float, Field(gt=0.0, le=4096.0)] | None = None
    """Scale is alpha/rank. Default: equal to rank (scale 1)."""
    targets: tuple[Target, ...] = ("attention", "ff")
    """Which UNet layers get adapters. Default: attention and ff, plus conv for locon/loha/lokr
    (LyCORIS trains the 3x3 convolutions by default)."""
    conv_rank: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Rank of the 3x3-conv adapters (default: rank)."""
    conv_alpha: Annotated[float, Field(gt=0.0, le=4096.0)] | None = None
    """Default: equal to conv_rank."""
    dropout: Fraction = 0.0
    text_encoder: bool = False
    """Also train LoRA on both text encoders."""
    factor: Annotated[int, Field(ge=1, le=8192)] | None = None
    """LoKr only: the size bound of the Kronecker factor (LyCORIS `factor`). Default: automatic
    (LyCORIS -1, the split nearest the square root of each dimension)."""
    dora: bool = False
    """DoRA (weight-decomposed LoRA): a trained magnitude per output channel on top of the LoRA
    or LoCon direction (peft `use_dora`, LyCORIS `dora_wd`)."""

    @model_validator(mode="before")
    @classmethod
    def _default_targets(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("targets") is None:
            data = {**data, "targets": default_targets(data.get("algo", "lora"))}
        return data

    @model_validator(mode="after")
    def _check_targets(self) -> Adapter:
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("a target is listed twice")
        if not self.targets:
            raise ValueError("an adapter needs at least one target")
        if self.factor is not None and self.algo != "lokr":
            raise ValueError("factor only applies to lokr adapters")
        if self.dora and self.algo not in ("lora", "locon"):
            raise ValueError("dora applies to lora and locon adapters")
        return self

    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)

    @property
    def effective_conv_rank(self) -> int:
        return self.conv_rank if self.conv_rank is not None else self.rank

    @property
    def effective_conv_alpha(self) -> float:
        if self.conv_alpha is not None:
            return self.conv_alpha
        return float(self.effective_conv_rank)


def default_targets(algo: str) -> tuple[str, ...]:
    """The targets an adapter gets when the recipe names none."""
    return ("attention", "ff", "conv") if algo in ("locon", "loha", "lokr") else ("attention", "ff")


class Ema(Spec):
    """An exponential moving average of the adapter weights, saved as a second file."""

    decay: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.995
    """The most the average keeps of itself per optimizer step (SimpleTuner's `ema_decay`);
    early steps keep less: (1 + j) / (10 + j) at the j-th update after the first."""


class Warmup(Spec):
    """`warmup 100` (steps) or `warmup 5%` (of the total steps)."""

    value: Annotated[float, Field(ge=0.0)]
    unit: Literal["steps", "percent"] = "steps"

    @model_validator(mode="after")
    def _check(self) -> Warmup:
        if self.unit == "steps" and self.value != int(self.value):
            raise ValueError("warmup in steps must be a whole number")
        if self.unit == "percent" and self.value > 100:
            raise ValueError("warmup percent must be at most 100%")
        return self

    def steps(self, total_steps: int) -> int:
        if self.unit == "steps":
            return int(self.value)
        return round(total_steps * self.value / 100)


Auto = Literal["auto"]
"""A memory measure lorafile chooses (compiler/vram.py `resolve_auto`); on/off wins over it."""


class Cache(Spec):
    """What is computed once before training instead of every step.

    `auto` (the default): each cache is on whenever it is exact (latents: no color
    augmentation; text: frozen text encoders, no caption shuffling or dropout)."""

    latents: bool | Auto = "auto"
    text: bool | Auto = "auto"
    """Text-encoder outputs; requires frozen text encoders and no caption shuffling/dropout."""
    location: Literal["memory", "disk"] = "memory"

    @model_validator(mode="before")
    @classmethod
    def _named_means_chosen(cls, data):
        # `Cache(latents=True)` reads as `cache latents`: the one not named is not cached.
        if isinstance(data, dict) and ("latents" in data) != ("text" in data):
            named = data.get("latents", data.get("text"))
            if named != "auto":
                data = {"latents": False, "text": False, **data}
        return data

    @model_validator(mode="after")
    def _auto_together(self) -> Cache:
        # `cache auto` is one statement for both: a half-auto cache has no recipe spelling.
        if (self.latents == "auto") != (self.text == "auto"):
            raise ValueError("cache latents and text are either both auto or both chosen")
        return self

    @property
    def is_auto(self) -> bool:
        return self.latents == "auto"


class TimestepBias(Spec):
    """Sample some timesteps more often (SimpleTuner's timestep_bias_*): the weight of the
    biased timesteps is multiplied, the rest keep weight 1."""

    strategy: BiasStrategy
    multiplier: Annotated[float, Field(gt=0.0, le=100.0)]
    portion: Fraction = 0.25
    """`earlier`/`later`: the share of the schedule at its start/end that is biased."""
    begin: Annotated[int, Field(ge=0, le=NUM_TIMESTEPS - 1)] = 0
    end: Annotated[int, Field(ge=1, le=NUM_TIMESTEPS)] = NUM_TIMESTEPS
    """`range`: timesteps begin..end (the end excluded) are biased."""

    @model_validator(mode="after")
    def _check(self) -> TimestepBias:
        if self.strategy == "range":
            if self.begin >= self.end:
                raise ValueError(f"the bias range {self.begin}..{self.end} is empty")
            if self.portion != 0.25:
                raise ValueError("portion applies to the earlier and later biases only")
        elif (self.begin, self.end) != (0, NUM_TIMESTEPS):
            raise ValueError("a timestep range applies to the range bias only")
        return self


class Train(Spec):
    """How long, how fast and how precisely to train."""

    steps: PositiveInt | None = None
    epochs: PositiveInt | None = None
    batch: Annotated[int, Field(ge=1, le=256)] = 1
    accumulate: Annotated[int, Field(ge=1, le=1024)] = 1
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-4
    unet_lr: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    """Default: lr."""
    text_encoder_lr: Annotated[float, Field(ge=0.0, le=10.0)] | None = None
    """Default: lr. Only used when the adapter trains the text encoders."""
    scheduler: Scheduler = "constant"
    cycles: PositiveInt | None = None
    """Restarts for cosine_with_restarts (default 1)."""
    power: Annotated[float, Field(gt=0.0)] | None = None
    """Exponent for polynomial (default 1.0)."""
    warmup: Warmup | None = None
    optimizer: Optimizer = "adamw8bit"
    optimizer_args: dict[str, str | int | float | bool] = {}
    precision: Precision = "bf16"
    """Mixed-precision compute dtype (`no` = fp32)."""
    base_precision: BasePrecision | None = None
    """Dtype of the frozen base weights. Default: the mixed-precision dtype (fp32 for `no`)."""
    checkpointing: bool | Auto = "auto"
    """Gradient checkpointing: ~6 GiB less at 1024², ~1.8x slower step. `auto`: on only when
    the VRAM model says the step does not fit the budget without it; never on a CPU."""
    cache: Cache = Cache()
    noise_offset: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    noise_offset_probability: Fraction = 1.0
    """The share of steps that get the noise offset (SimpleTuner's default is 25%)."""
    multires_noise_iterations: Annotated[int, Field(ge=1, le=32)] | None = None
    """Multi-resolution (pyramid) noise: this many coarser noise layers are added."""
    multires_noise_discount: Fraction = 0.3
    """Weight factor per coarser layer of multi-resolution noise."""
    ip_noise_gamma: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Input-perturbation noise (Ning et al. 2023): the UNet sees extra noise of this strength
    that its target leaves out."""
    min_timestep: Annotated[int, Field(ge=0, le=NUM_TIMESTEPS - 1)] = 0
    max_timestep: Annotated[int, Field(ge=1, le=NUM_TIMESTEPS)] = NUM_TIMESTEPS
    """Timesteps are drawn from min..max, the max excluded (kohya's min/max_timestep)."""
    timestep_bias: TimestepBias | None = None
    loss: LossKind = "l2"
    huber_schedule: HuberSchedule = "snr"
    """How the Huber threshold changes with the timestep (kohya's and SimpleTuner's default)."""
    huber_c: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    debiased_estimation: bool = False
    """Weight the loss by 1/sqrt(SNR) (1/(SNR+1) for v-prediction), Yu et al. 2024."""
    min_snr_gamma: Annotated[float, Field(gt=0.0, le=100.0)] | None = None
    max_grad_norm: Annotated[float, Field(ge=0.0)] = 1.0
    """0 disables clipping."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    """Default: a random seed, recorded in the outputs."""
    memory: Literal["manual", "auto"] = "manual"
    """`auto`: lorafile switches on the cheapest memory measures that fit the hardware budget."""
    graphs: bool = True
    """Native trainer on CUDA: capture each bucket shape's step as a CUDA graph and replay it
    (runtime/train/graphs.py). Other trainers never capture; `off` is what they do."""

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> Train:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        if self.steps is None and self.epochs is None:
            raise ValueError("train needs either steps or epochs")
        if self.cycles is not None and self.scheduler != "cosine_with_restarts":
            raise ValueError("cycles only apply to the cosine_with_restarts scheduler")
        if self.power is not None and self.scheduler != "polynomial":
            raise ValueError("power only applies to the polynomial scheduler")
        warmup = self.warmup
        if warmup and warmup.unit == "steps" and self.steps and warmup.value > self.steps:
            raise ValueError("warmup is longer than training")
        if self.min_timestep >= self.max_timestep:
            raise ValueError(
                f"the timestep range {self.min_timestep}..{self.max_timestep} is empty"
            )
        return self

    @property
    def effective_base_precision(self) -> str:
        if self.base_precision is not None:
            return self.base_precision
        return "fp32" if self.precision == "no" else self.precision


class Save(Spec):
    """When and how adapter files are written."""

    every: Interval | None = None
    """Default: only the final adapter."""
    keep: PositiveInt | None = None
    """Keep only the last K intermediate files (default: keep all)."""
    format: Literal["safetensors"] = "safetensors"
    precision: SavePrecision = "fp16"
    layout: Layout = "kohya"
    """`kohya` loads in ComfyUI, AUTOMATIC1111 and diffusers; `diffusers` is the peft layout."""


class Sample(Spec):
    """Preview images generated during training."""

    every: Interval
    sampler: Sampler = "euler_a"
    steps: Annotated[int, Field(ge=1, le=1000)] = 28
    cfg: Annotated[float, Field(ge=0.0, le=50.0)] = 7.0
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    size: Resolution = Resolution(width=1024, height=1024)
    negative: str = ""
    prompts: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _has_prompts(self) -> Sample:
        if not self.prompts:
            raise ValueError("sampling needs at least one prompt")
        return self


class Hardware(Spec):
    """Where the run happens; drives the VRAM lint and the launcher."""

    gpu: str | None = None
    vram: Annotated[int, Field(ge=1)] | None = None
    """Bytes per GPU (written `12GB` or `16GiB`); overrides the catalog size of `gpu`."""
    gpus: Annotated[int, Field(ge=1, le=1024)] = 1
    """GPUs per machine."""
    machines: Annotated[int, Field(ge=1, le=1024)] = 1
    main_address: str | None = None
    main_port: Annotated[int, Field(ge=1, le=65535)] | None = None


class Output(Spec):
    """Where the adapter files, samples and logs go."""

    path: Annotated[str, Field(min_length=1)]
    name: str | None = None
    """File name stem of the adapter; default: the recipe name."""

    _stem = field_validator("name")(_file_stem)


class Log(Spec):
    """Training metrics: where they are logged."""

    to: Logger = "none"
    path: str | None = None
    """Default: `<output>/logs`."""


class Recipe(Spec):
    """A complete LoRA training run."""

    name: Annotated[str, Field(min_length=1)]
    base: Base
    datasets: Annotated[tuple[Dataset, ...], Field(min_length=1)]
    trigger: Annotated[str, Field(min_length=1)] | None = None
    """Activation token(s) prepended to every caption."""
    regularization: tuple[Regularization, ...] = ()
    adapter: Adapter = Adapter()
    train: Train
    ema: Ema | None = None
    save: Save = Save()
    sample: Sample | None = None
    hardware: Hardware = Hardware()
    output: Output
    log: Log = Log()
    passthrough: dict[str, dict[str, PassValue]] = {}
    """Trainer settings without a recipe equivalent, by trainer (`kohya`, `simpletuner`): kept
    so that importing and re-exporting a config loses nothing."""

    _stem = field_validator("name")(_file_stem)  # the default output name

    @field_validator("trigger")
    @classmethod
    def _trigger_has_text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise PydanticCustomError("blank_string", "the trigger is only white space")
        return value

    @property
    def output_name(self) -> str:
        return self.output.name or self.name
