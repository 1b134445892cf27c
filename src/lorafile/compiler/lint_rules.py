"""The lint rules (L3xx): advice about a recipe that validates but is likely to train badly.

Each rule is a function of a `LintContext` that reports through `ctx.bag`, positioned with the
recipe's SourceMap when there is one. docs/diagnostics.md documents every code with what / why /
example / instead. Rules that look at the dataset read the folder only when it exists (image
headers and caption files; no image library). Trainer traps (kohya, SimpleTuner) run when the
file comes from that trainer or the lint targets it.
"""

from __future__ import annotations

import math
import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lorafile import files as files_
from lorafile.compiler import clip_bpe
from lorafile.compiler.dataset_count import NATIVE, list_images
from lorafile.compiler.diagnostics import DiagnosticBag, Span
from lorafile.spec import Recipe

MAX_SCANNED = 5000

# Usual learning rates for AdamW-family optimizers (kohya/SimpleTuner guides; vram_perf.md).
USUAL_LR = {"style": 1e-4, "character": 5e-5, "concept": 1e-4}
LR_FACTOR = 5.0
ADAPTIVE = {"prodigy": 1.0}
# Image counts that usually work (community guides): style 15-50, character 20-100.
USUAL_SIZE = {"style": (15, 50), "character": (20, 100)}
# Steps heuristic: images x repeats x 10 epochs / effective batch; "far" is a factor of 3.
HEURISTIC_EPOCHS = 10
STEPS_FACTOR = 3.0
# A trigger that is one CLIP token made by an early merge is a frequent word with a prior.
COMMON_TOKEN_RANK = 16000
MAX_TRIGGER_TOKENS = 3


@dataclass
class Image:
    path: Path
    width: int
    height: int


@dataclass
class LintContext:
    """What the rules see: the recipe, the trainer it is linted for, positions, and a bag."""

    recipe: Recipe
    bag: DiagnosticBag
    trainer: str = "native"
    source: str = "recipe"
    """What the file was: `recipe`, `kohya` or `simpletuner`."""
    smap: object | None = None
    gpus: int | None = None
    base_dir: Path | None = None
    """The recipe's folder: relative dataset paths are relative to it, as for the trainer."""
    _images: dict[int, list[Image] | None] = field(default_factory=dict)

    def span(self, *path) -> Span | None:
        if self.smap is None:
            return None
        find = getattr(self.smap, "find", None)
        return find(tuple(path)) if find else self.smap.get(tuple(path))  # type: ignore[attr-defined]

    def images(self, index: int) -> list[Image] | None:
        """Images of dataset `index` (None when its folder does not exist here)."""
        if index not in self._images:
            folder = Path(self.recipe.datasets[index].path)
            if self.base_dir is not None and not folder.is_absolute():
                folder = self.base_dir / folder
            self._images[index] = scan_images(folder)
        return self._images[index]

    @property
    def for_kohya(self) -> bool:
        return "kohya" in (self.trainer, self.source)

    @property
    def for_simpletuner(self) -> bool:
        return "simpletuner" in (self.trainer, self.source)


# ==== dataset folders ===========================================================================
def scan_images(folder: Path) -> list[Image] | None:
    """Images in `folder`, or in its immediate subfolders (kohya's `N_name` layout)."""
    if not files_.is_dir(folder):
        return None
    try:
        files = list_images(folder, NATIVE)
        if not files:
            subdirs = sorted(p for p in folder.iterdir() if files_.is_dir(p))
            files = sorted(f for d in subdirs for f in list_images(d, NATIVE))
    except OSError:  # unreadable, or gone while listing: the lint has nothing to look at
        return None
    out = []
    for path in files[:MAX_SCANNED]:
        size = image_size(path)
        if size:
            out.append(Image(path, *size))
    return out


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, WebP or BMP header; None when unreadable."""
    try:
        with path.open("rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:2] == b"BM" and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return w, abs(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            i += 1
            continue
        marker = head[i + 1]
        length = struct.unpack(">H", head[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", head[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def caption_file(image: Path, captions: str) -> Path | None:
    """The sidecar caption file of an image, for `captions txt|caption|<ext>`."""
    if captions in ("filename", "trigger"):
        return None
    return image.with_suffix("." + captions.lstrip("."))


# ==== base model ================================================================================
# "SDXL 2.0" comes from a widely copied blog post; Stability AI never released one.
SDXL_2_SPELLINGS = re.compile(r"(sdxl|xl-base|xl_base)[-_ ]?2(\.0)?\b", re.IGNORECASE)


def base_named_sdxl_2(ctx: LintContext) -> None:
    path = ctx.recipe.base.path
    if SDXL_2_SPELLINGS.search(path):
        ctx.bag.warning(
            "L318",
            f"The base model `{path}` is named as an SDXL 2.0, which was never released; the "
            "SDXL family is base 1.0 and its fine-tunes.",
            "check that the file is SDXL base 1.0 (sd_xl_base_1.0.safetensors) or a fine-tune "
            "of it, and rename it so the name says what it is",
            ctx.span("base"),
        )


def zero_snr_without_v(ctx: LintContext) -> None:
    base = ctx.recipe.base
    if base.zero_terminal_snr and base.prediction == "epsilon":
        ctx.bag.warning(
            "L324",
            "zero_terminal_snr with epsilon prediction: at the last timestep the input is pure "
            "noise, so predicting the noise there is trivial and samples that start from it "
            "cannot recover the image (kohya warns the same).",
            "add `prediction v` for a v-prediction model, or remove zero_terminal_snr",
            ctx.span("base", "zero_terminal_snr"),
        )


# ==== precision and learning rate ===============================================================
def precision_fp16(ctx: LintContext) -> None:
    train = ctx.recipe.train
    if train.precision == "fp16" or train.base_precision == "fp16":
        ctx.bag.warning(
            "L301",
            "fp16 training of SDXL overflows easily and produces NaN losses; bf16 does not.",
            "write `precision bf16` (RTX 30 series and newer, A100/H100); on older cards keep "
            "fp16 with the sdxl-vae-fp16-fix VAE",
            ctx.span("train", "precision"),
        )


def learning_rate(ctx: LintContext) -> None:
    train, kind = ctx.recipe.train, ctx.recipe.datasets[0].kind
    lr = train.unet_lr or train.lr
    usual = ADAPTIVE.get(train.optimizer, USUAL_LR[kind])
    if usual / LR_FACTOR <= lr <= usual * LR_FACTOR:
        return
    what = f"{train.optimizer}" if train.optimizer in ADAPTIVE else f"a {kind} LoRA"
    ctx.bag.warning(
        "L302",
        f"The learning rate {lr:g} is far from the usual {usual:g} for {what}.",
        f"start from `lr {usual:g}`"
        + (
            " (Prodigy sets its own step size; lr is a multiplier)"
            if train.optimizer in ADAPTIVE
            else ""
        ),
        ctx.span("train", "lr"),
    )


# ==== dataset size and training length ==========================================================
def dataset_size(ctx: LintContext) -> None:
    for i, ds in enumerate(ctx.recipe.datasets):
        images = ctx.images(i)
        if images is None or ds.kind not in USUAL_SIZE:
            continue
        low, high = USUAL_SIZE[ds.kind]
        if not low <= len(images) <= high:
            ctx.bag.warning(
                "L304",
                f"The {ds.kind} dataset `{ds.path}` has {len(images)} images; {low}-{high} usually work best.",
                "add more varied images"
                if len(images) < low
                else "curate it down to the best, most varied images",
                ctx.span("datasets", i),
            )


def steps_heuristic(ctx: LintContext) -> None:
    r = ctx.recipe
    counts = [ctx.images(i) for i in range(len(r.datasets))]
    if r.train.steps is None or any(c is None for c in counts):
        return
    views = sum(len(c) * ds.repeats for c, ds in zip(counts, r.datasets, strict=True))  # type: ignore[arg-type]
    if r.regularization:
        # kohya repeats the class images until they match the training samples, doubling an
        # epoch; SimpleTuner adds one pass over them instead (T551). The 3x band of this
        # heuristic covers the difference; the kohya reading is the one documented.
        views *= 2
    effective = r.train.batch * r.train.accumulate * (ctx.gpus or r.hardware.gpus)
    usual = max(1, math.ceil(views * HEURISTIC_EPOCHS / effective))
    steps = r.train.steps
    if usual / STEPS_FACTOR <= steps <= usual * STEPS_FACTOR:
        return
    ctx.bag.warning(
        "L303",
        f"{steps} steps is far from the usual {usual} (images x repeats x {HEURISTIC_EPOCHS} "
        f"epochs / effective batch {effective}).",
        f"train for about {usual} steps and compare samples, or change `repeats`",
        ctx.span("train", "steps"),
    )


# ==== adapter ===================================================================================
def rank_alpha(ctx: LintContext) -> None:
    adapter = ctx.recipe.adapter
    scale = adapter.effective_alpha / adapter.rank
    # LoKr layers whose factors are both full ignore alpha (scale 1), and LyCORIS' own LoKr
    # settings (a huge dim with alpha 1) are the usual ones: the ratio says little there.
    if 1 / 16 <= scale <= 2 or adapter.algo == "lokr":
        return
    effect = "multiplies every update" if scale > 2 else "shrinks every update"
    ctx.bag.warning(
        "L305",
        f"alpha {adapter.effective_alpha:g} with rank {adapter.rank} gives a scale of {scale:g}, "
        f"which {effect}.",
        f"use alpha between rank/2 and rank (e.g. `alpha {max(1, adapter.rank // 2)}`), or "
        "retune the learning rate for this scale",
        ctx.span("adapter", "alpha"),
    )


def lycoris_alpha_int(ctx: LintContext) -> None:
    adapter = ctx.recipe.adapter
    if not ctx.for_simpletuner or adapter.algo == "lora":
        return
    for name, value in (
        ("alpha", adapter.effective_alpha),
        ("conv_alpha", adapter.effective_conv_alpha),
    ):
        if value == int(value):
            continue
        report = ctx.bag.error if int(value) == 0 else ctx.bag.warning
        report(
            "L316",
            f"SimpleTuner casts LyCORIS `{name}` {value:g} to the integer {int(value)}"
            + (", which switches the adapter off." if int(value) == 0 else "."),
            f"use a whole-number {name} such as `{name} {max(1, round(value))}`",
            ctx.span("adapter", name),
        )


# ==== trigger word ==============================================================================
def trigger_tokens(ctx: LintContext) -> None:
    trigger = ctx.recipe.trigger
    if not trigger:
        return
    bpe = clip_bpe.load()
    if bpe is None:
        ctx.bag.info(
            "L308",
            "The trigger-word check was skipped: CLIP's BPE vocabulary is not installed.",
            "install it with `pip install --no-deps open-clip-torch` (no torch needed)",
            ctx.span("trigger"),
        )
        return
    tokens = bpe.tokens(trigger)
    if len(tokens) > MAX_TRIGGER_TOKENS:
        ctx.bag.warning(
            "L307",
            f"CLIP splits the trigger `{trigger}` into {len(tokens)} tokens "
            f"({' '.join(t.replace('</w>', '') for t in tokens)}).",
            "choose a trigger of 1-3 tokens, e.g. a short rare word like `ohwx`",
            ctx.span("trigger"),
        )
    _common_word(ctx, bpe, trigger, tokens)


def _common_word(ctx: LintContext, bpe, trigger: str, tokens: list[str]) -> None:
    if len(tokens) != 1 or not trigger.isalpha():
        return
    rank = bpe.merge_rank(tokens[0])
    if rank is not None and rank < COMMON_TOKEN_RANK:
        ctx.bag.warning(
            "L306",
            f"The trigger `{trigger}` is a common word with its own meaning in CLIP (one "
            "frequent token); the LoRA will fight that meaning.",
            "use a rare token such as `ohwx` or a made-up word that is not an English word",
            ctx.span("trigger"),
        )


def trigger_in_captions(ctx: LintContext) -> None:
    """The recipe's trigger is prepended to every caption (kohya `caption_prefix`, SimpleTuner
    `prepend_instance_prompt`): captions that already start with it get it twice. Without a
    trigger, kohya's `N_tokens` folder names are the trap: caption files replace those tokens."""
    for i, ds in enumerate(ctx.recipe.datasets):
        texts = _captions(ctx, i)
        if not texts:
            continue
        if ctx.recipe.trigger:
            _trigger_twice(ctx, ds.path, ctx.recipe.trigger, texts)
        else:
            _folder_tokens_missing(ctx, ds.path, texts)


def _starts(text: str, token: str) -> bool:
    return text.strip().lower().startswith(token.lower())


def _trigger_twice(ctx: LintContext, folder: str, trigger: str, texts) -> None:
    twice = [p for p, text in texts if _starts(text, trigger)]
    if twice:
        ctx.bag.warning(
            "L309",
            f"{len(twice)} of {len(texts)} caption files in `{folder}` already start with the "
            f"trigger `{trigger}`, which is also prepended: they train on it twice "
            f"(first: {twice[0].name}).",
            f"remove `{trigger}` from the caption files and let `trigger` prepend it",
            ctx.span("trigger"),
        )


def _folder_tokens_missing(ctx: LintContext, folder: str, texts) -> None:
    by_folder: dict[Path, list[Path]] = {}
    for path, text in texts:
        tokens = _kohya_tokens(path.parent)
        if tokens and not _starts(text, tokens):
            by_folder.setdefault(path.parent, []).append(path)
    for sub, missing in by_folder.items():
        tokens = _kohya_tokens(sub)
        ctx.bag.warning(
            "L309",
            f"{len(missing)} caption files in `{sub}` do not start with `{tokens}`: kohya uses "
            f"the folder's class tokens only for images without a caption file "
            f"(first: {missing[0].name}).",
            f'start the captions with `{tokens}`, or set `trigger "{tokens}"` to prepend it',
            ctx.span("datasets"),
        )


def _kohya_tokens(folder: Path) -> str | None:
    """`ohwx woman` for kohya's `10_ohwx woman` folder naming; None otherwise."""
    count, sep, tokens = folder.name.partition("_")
    return tokens.strip() if sep and count.isdigit() and tokens.strip() else None


def _captions(ctx: LintContext, index: int) -> list[tuple[Path, str]]:
    images = ctx.images(index) or []
    out = []
    for image in images:
        path = caption_file(image.path, ctx.recipe.datasets[index].captions)
        if path is not None and files_.is_file(path):
            out.append((path, path.read_text(encoding="utf-8", errors="replace")))
    return out


# ==== regularization ============================================================================
def regularization_ratio(ctx: LintContext) -> None:
    if not any(ds.kind == "character" for ds in ctx.recipe.datasets):
        return
    for i, reg in enumerate(ctx.recipe.regularization):
        if 0.5 <= reg.ratio <= 2.0:
            continue
        ctx.bag.warning(
            "L310",
            f"The regularization ratio {reg.ratio:g}:1 is far from 1:1 for a character LoRA.",
            "use `ratio 1:1` so the class prior and the subject are seen equally often",
            ctx.span("regularization", i, "ratio"),
        )


# ==== trainer traps =============================================================================
def warmup_with_constant(ctx: LintContext) -> None:
    train = ctx.recipe.train
    if train.scheduler != "constant" or not train.warmup or train.warmup.value == 0:
        return
    report = ctx.bag.error if ctx.for_kohya else ctx.bag.warning
    report(
        "L311",
        "The `constant` scheduler ignores warmup"
        + (
            " and kohya refuses it (`constant does not require num_warmup_steps`)."
            if ctx.for_kohya
            else "."
        ),
        "write `constant_with_warmup`, or drop the warmup",
        ctx.span("train", "warmup"),
    )


def text_cache_conflicts(ctx: LintContext) -> None:
    r = ctx.recipe
    if not r.train.cache.text:
        return
    if r.adapter.text_encoder:
        ctx.bag.error(
            "L312",
            "Text-encoder outputs are cached, but the adapter trains the text encoders.",
            "drop `text` from `cache`, or stop training the text encoders",
            ctx.span("train", "cache"),
        )
    if ctx.for_simpletuner:
        return  # SimpleTuner caches the empty caption's embedding too, so dropout still works
    for i, ds in enumerate(r.datasets):
        if ds.shuffle_captions or ds.caption_dropout > 0:
            ctx.bag.error(
                "L312",
                f"Text-encoder outputs are cached, but dataset `{ds.path}` shuffles or drops "
                "captions, which needs a fresh encoding every step.",
                "drop `text` from `cache`, or turn off caption shuffling and dropout",
                ctx.span("datasets", i),
            )


def sample_size(ctx: LintContext) -> None:
    sample = ctx.recipe.sample
    if sample is None:
        _kohya_unread_prompts(ctx)
        return
    if sample.size.pixels >= 768 * 768:
        return
    why = " (kohya's default when a prompt line has no --w/--h)" if ctx.source == "kohya" else ""
    ctx.bag.warning(
        "L313",
        f"Samples are generated at {sample.size.width}x{sample.size.height}{why}; SDXL at that "
        "size looks broken and hides what the LoRA learned.",
        "sample at 1024x1024 or another SDXL bucket size (`size 1024x1024`)",
        ctx.span("sample", "size"),
    )


def _kohya_unread_prompts(ctx: LintContext) -> None:
    kohya = ctx.recipe.passthrough.get("kohya", {})
    if ctx.source != "kohya" or not kohya.get("sample_prompts"):
        return
    ctx.bag.warning(
        "L313",
        f"kohya samples at 512x512 unless each line of `{kohya['sample_prompts']}` gives "
        "--w and --h; SDXL at that size looks broken.",
        "add `--w 1024 --h 1024` to every prompt line",
    )


def bucket_step(ctx: LintContext) -> None:
    for i, ds in enumerate(ctx.recipe.datasets):
        if not ds.buckets.enabled or ds.buckets.step % 32 == 0:
            continue
        report = ctx.bag.error if ctx.for_kohya else ctx.bag.warning
        report(
            "L314",
            f"Bucket step {ds.buckets.step} is not a multiple of 32; the SDXL UNet needs sizes "
            "divisible by 32" + (" and kohya rejects it." if ctx.for_kohya else "."),
            "use `step 64` (or 32)",
            ctx.span("datasets", i, "buckets"),
        )


def small_aspect_buckets(ctx: LintContext) -> None:
    if not ctx.for_simpletuner:
        return
    train = ctx.recipe.train
    need = train.batch * train.accumulate * (ctx.gpus or ctx.recipe.hardware.gpus)
    for i, ds in enumerate(ctx.recipe.datasets):
        images = ctx.images(i)
        if not images:
            continue
        # SimpleTuner groups by aspect ratio rounded to 2 decimals (aspect_bucket_rounding).
        buckets = Counter(round(im.width / im.height, 2) for im in images)
        small = sorted(a for a, n in buckets.items() if n * ds.repeats < need)
        if small:
            ctx.bag.warning(
                "L315",
                f"{len(small)} aspect bucket(s) of `{ds.path}` ({', '.join(f'{a:g}' for a in small[:5])}) "
                f"hold fewer than batch x GPUs x accumulation = {need} samples; SimpleTuner drops them.",
                "crop those images to a common aspect ratio, raise `repeats`, or lower the batch",
                ctx.span("datasets", i),
            )


def minimum_image_size(ctx: LintContext) -> None:
    if not ctx.for_simpletuner:
        return
    value = ctx.recipe.passthrough.get("simpletuner", {}).get("minimum_image_size")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    for i, ds in enumerate(ctx.recipe.datasets):
        images = ctx.images(i)
        if not images:
            continue
        # Below ~10 the value is megapixels (resolution_type=area), otherwise pixels.
        too_small = [im for im in images if _below(im, float(value))]
        if too_small:
            report = ctx.bag.error if len(too_small) == len(images) else ctx.bag.warning
            report(
                "L317",
                f"`minimum_image_size` {value:g} excludes {len(too_small)} of {len(images)} "
                f"images in `{ds.path}` (first: {too_small[0].path.name}).",
                "lower `minimum_image_size` to at most the smallest image you want to train on",
                None,
            )


def _below(image: Image, minimum: float) -> bool:
    if minimum <= 10:
        return image.width * image.height / 1e6 < minimum
    return min(image.width, image.height) < minimum


Rule = Callable[[LintContext], None]
RULES: tuple[Rule, ...] = (
    base_named_sdxl_2,
    zero_snr_without_v,
    precision_fp16,
    learning_rate,
    steps_heuristic,
    dataset_size,
    rank_alpha,
    trigger_tokens,
    trigger_in_captions,
    regularization_ratio,
    warmup_with_constant,
    text_cache_conflicts,
    sample_size,
    bucket_step,
    small_aspect_buckets,
    lycoris_alpha_int,
    minimum_image_size,
)
