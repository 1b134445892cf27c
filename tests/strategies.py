"""Hypothesis strategies for valid `Recipe` objects, every field covered.

Explicit strategies, not `st.builds(Model)` inference: pydantic v2 has no hypothesis plugin and
inference ignores `Field(ge=..)` bounds (style-anchors.md 4c). Each strategy draws only values
the spec accepts, so a failure in a property test is a bug in the code under test.

Usage (any test file): `from strategies import recipes` (tests/ is on sys.path via conftest).
"""

from __future__ import annotations

from hypothesis import strategies as st

from lorafile.spec import models as m

# Text without lone surrogates (they cannot be encoded, so no file can hold them) and without
# NUL (no path, name or command line can carry one: R208).
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,11}", fullmatch=True)


def text(min_size: int = 1, max_size: int = 24) -> st.SearchStrategy[str]:
    """Any text, quotes, backslashes and line breaks included (the formatter must escape)."""
    plain = st.text(st.sampled_from("abcxyz _-/.0123"), min_size=min_size, max_size=max_size)
    wild = st.text(TEXT_CHARS, min_size=min_size, max_size=max_size)
    return st.one_of(plain, wild)


def file_names(min_size: int = 1) -> st.SearchStrategy[str]:
    """Names that may be a file name in the output folder (R209: no / or \\, not . or ..)."""
    return text(min_size).map(_file_name)


def _file_name(s: str) -> str:
    s = s.replace("/", "_").replace("\\", "_")
    return s + "_" if s.strip() in (".", "..") else s


def paths() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["/data/images", "/models/sd_xl_base_1.0.safetensors", "C:\\data\\x"]),
        text(),
    )


def floats(low: float, high: float, exclude_min: bool = False) -> st.SearchStrategy[float]:
    """Finite floats in [low, high], mixing round values (1e-4, 0.5) with arbitrary ones."""
    nice = st.sampled_from([1e-6, 5e-5, 1e-4, 2.5e-4, 0.001, 0.0357, 0.1, 0.5, 1.0, 2.0, 7.5, 16.0])
    nice = nice.filter(lambda x: (low < x if exclude_min else low <= x) and x <= high)
    raw = st.floats(low, high, allow_nan=False, allow_infinity=False, exclude_min=exclude_min)
    return st.one_of(nice, raw)


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


def resolutions() -> st.SearchStrategy[m.Resolution]:
    side = st.integers(64, 8192)
    square = side.map(lambda s: m.Resolution(width=s, height=s))
    return st.one_of(square, st.builds(m.Resolution, width=side, height=side))


def intervals() -> st.SearchStrategy[m.Interval]:
    return st.builds(
        m.Interval, every=st.integers(1, 100_000), unit=st.sampled_from(["steps", "epochs"])
    )


def bases() -> st.SearchStrategy[m.Base]:
    return st.builds(
        m.Base,
        path=paths(),
        vae=optional(paths()),
        variant=optional(st.sampled_from(m.WEIGHT_VARIANTS)),
        prediction=st.sampled_from(["epsilon", "v"]),
        zero_terminal_snr=st.booleans(),
        clip_skip=optional(st.integers(1, 12)),
    )


_BUCKET_SIDES = st.lists(st.integers(64, 8192), min_size=2, max_size=2).map(sorted)


def buckets() -> st.SearchStrategy[m.Buckets]:
    return st.builds(
        lambda sides, **kw: m.Buckets(min=sides[0], max=sides[1], **kw),
        _BUCKET_SIDES,
        enabled=st.booleans(),
        step=st.integers(8, 512),
        upscale=st.booleans(),
    )


def datasets() -> st.SearchStrategy[m.Dataset]:
    captions = st.one_of(st.sampled_from(["txt", "caption", "filename", "trigger", "tags"]), text())
    return st.builds(
        m.Dataset,
        path=paths(),
        kind=st.sampled_from(m.DATASET_KINDS),
        captions=captions,
        repeats=st.integers(1, 1000),
        resolution=resolutions(),
        buckets=st.one_of(st.just(m.Buckets()), buckets()),
        flip=st.booleans(),
        color_aug=st.booleans(),
        shuffle_captions=st.booleans(),
        keep_tokens=st.integers(0, 75),
        caption_dropout=floats(0.0, 1.0),
    )


def regularizations() -> st.SearchStrategy[m.Regularization]:
    return st.builds(
        m.Regularization,
        path=paths(),
        class_prompt=text(),
        ratio=floats(0.0, 100.0, exclude_min=True),
        weight=floats(0.0, 100.0),
    )


_TARGET_LISTS = optional(
    st.permutations(m.TARGETS).flatmap(
        lambda order: st.integers(1, len(order)).map(lambda n: tuple(order[:n]))
    )
)
_ALPHAS = optional(floats(0.0, 4096.0, exclude_min=True))


def adapters() -> st.SearchStrategy[m.Adapter]:
    return st.sampled_from(m.ADAPTER_ALGOS).flatmap(_adapters)


def _adapters(algo: str) -> st.SearchStrategy[m.Adapter]:
    """Adapters of one algo: `factor` only for lokr, `dora` only for lora/locon."""
    return st.builds(
        m.Adapter,
        algo=st.just(algo),
        factor=optional(st.integers(1, 64)) if algo == "lokr" else st.none(),
        dora=st.booleans() if algo in ("lora", "locon") else st.just(False),
        rank=st.integers(1, 1024),
        alpha=_ALPHAS,
        targets=_TARGET_LISTS,
        conv_rank=optional(st.integers(1, 1024)),
        conv_alpha=_ALPHAS,
        dropout=floats(0.0, 1.0),
        text_encoder=st.booleans(),
    )


def scalar_values() -> st.SearchStrategy:
    """Values of optimizer arguments: text, whole numbers, floats, booleans."""
    return st.one_of(
        text(0),
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
    )


def keys() -> st.SearchStrategy[str]:
    return st.one_of(IDENT, text())


def _train_fields() -> dict[str, st.SearchStrategy]:
    """Strategies for Train's fields, built once (building them per draw is slow)."""
    lr = floats(0.0, 10.0, exclude_min=True)
    return {
        "batch": st.integers(1, 256),
        "accumulate": st.integers(1, 1024),
        "lr": lr,
        "unet_lr": optional(lr),
        "text_encoder_lr": optional(floats(0.0, 10.0)),
        "cycles": optional(st.integers(1, 100)),
        "power": optional(lr),
        "warmup_steps": optional(st.integers(0, 100_000)),
        "warmup_percent": optional(
            floats(0.0, 100.0).map(lambda p: m.Warmup(value=p, unit="percent"))
        ),
        "steps": optional(st.integers(1, 1_000_000)),
        "epochs": st.integers(1, 1000),
        # The two schedulers that take an argument are drawn more often, to cover it.
        "scheduler": st.one_of(
            st.sampled_from(m.SCHEDULERS), st.sampled_from(["cosine_with_restarts", "polynomial"])
        ),
        "bool": st.booleans(),
        "optimizer": st.sampled_from(m.OPTIMIZERS),
        "optimizer_args": st.dictionaries(keys(), scalar_values(), max_size=3),
        "precision": st.sampled_from(m.PRECISIONS),
        "base_precision": optional(st.sampled_from(m.BASE_PRECISIONS)),
        "cache": st.one_of(
            st.builds(
                m.Cache,
                latents=st.booleans(),
                text=st.booleans(),
                location=st.sampled_from(["memory", "disk"]),
            ),
            st.builds(m.Cache, location=st.sampled_from(["memory", "disk"])),  # auto
        ),
        "checkpointing": st.one_of(st.booleans(), st.just("auto")),
        "noise_offset": floats(0.0, 1.0),
        "noise_offset_probability": floats(0.0, 1.0),
        "multires_noise_iterations": optional(st.integers(1, 32)),
        "multires_noise_discount": floats(0.0, 1.0),
        "ip_noise_gamma": optional(floats(0.0, 1.0, exclude_min=True)),
        "timestep_bias": optional(timestep_biases()),
        "loss": st.sampled_from(m.LOSS_KINDS),
        "huber_schedule": st.sampled_from(m.HUBER_SCHEDULES),
        "huber_c": floats(0.0, 1.0, exclude_min=True),
        "debiased_estimation": st.booleans(),
        "min_snr_gamma": optional(floats(0.0, 100.0, exclude_min=True)),
        "max_grad_norm": floats(0.0, 1e6),
        "seed": optional(st.integers(0, 2**32 - 1)),
        "memory": st.sampled_from(["manual", "auto"]),
    }


@st.composite
def trains(draw) -> m.Train:
    f = TRAIN_FIELDS
    steps = draw(f["steps"])
    scheduler = draw(f["scheduler"])
    warmup_steps = draw(f["warmup_steps"])
    if warmup_steps is not None:  # in whole steps, never longer than training
        warmup = m.Warmup(value=min(warmup_steps, steps or warmup_steps), unit="steps")
    else:
        warmup = draw(f["warmup_percent"])
    plain = (
        "batch",
        "accumulate",
        "lr",
        "unet_lr",
        "text_encoder_lr",
        "optimizer",
        "optimizer_args",
        "precision",
        "base_precision",
        "cache",
        "noise_offset",
        "noise_offset_probability",
        "multires_noise_iterations",
        "multires_noise_discount",
        "ip_noise_gamma",
        "timestep_bias",
        "loss",
        "huber_schedule",
        "huber_c",
        "debiased_estimation",
        "min_snr_gamma",
        "max_grad_norm",
        "seed",
        "memory",
    )
    low, high = sorted(draw(st.lists(st.integers(0, 1000), min_size=2, max_size=2, unique=True)))
    full = draw(st.booleans())  # the default range often, any range otherwise
    return m.Train(
        min_timestep=0 if full else low,
        max_timestep=1000 if full else high,
        steps=steps,
        epochs=draw(f["epochs"]) if steps is None else None,
        scheduler=scheduler,
        cycles=draw(f["cycles"]) if scheduler == "cosine_with_restarts" else None,
        power=draw(f["power"]) if scheduler == "polynomial" else None,
        warmup=warmup,
        checkpointing=draw(f["checkpointing"]),
        graphs=draw(f["bool"]),
        **{name: draw(f[name]) for name in plain},
    )


def timestep_biases() -> st.SearchStrategy[m.TimestepBias]:
    multiplier = floats(0.0, 100.0, exclude_min=True)
    ends = st.lists(st.integers(0, 1000), min_size=2, max_size=2, unique=True).map(sorted)
    ranged = st.builds(
        lambda e, x: m.TimestepBias(strategy="range", begin=e[0], end=e[1], multiplier=x),
        ends,
        multiplier,
    )
    sided = st.builds(
        m.TimestepBias,
        strategy=st.sampled_from(["earlier", "later"]),
        multiplier=multiplier,
        portion=floats(0.0, 1.0),
    )
    return st.one_of(ranged, sided)


TRAIN_FIELDS = _train_fields()


def saves() -> st.SearchStrategy[m.Save]:
    return st.builds(
        m.Save,
        every=optional(intervals()),
        keep=optional(st.integers(1, 1000)),
        precision=st.sampled_from(m.SAVE_PRECISIONS),
        layout=st.sampled_from(m.LAYOUTS),
    )


def samples() -> st.SearchStrategy[m.Sample]:
    return st.builds(
        m.Sample,
        every=intervals(),
        sampler=st.sampled_from(m.SAMPLERS),
        steps=st.integers(1, 1000),
        cfg=floats(0.0, 50.0),
        seed=optional(st.integers(0, 2**32 - 1)),
        size=resolutions(),
        negative=st.one_of(st.just(""), text()),
        prompts=st.lists(text(), min_size=1, max_size=3).map(tuple),
    )


def sizes() -> st.SearchStrategy[int]:
    units = st.sampled_from([1, 10**3, 10**6, 10**9, 2**10, 2**20, 2**30])
    return st.one_of(
        st.tuples(st.integers(1, 512), units).map(lambda t: t[0] * t[1]), st.integers(1, 2**45)
    )


def hardwares() -> st.SearchStrategy[m.Hardware]:
    return st.builds(
        m.Hardware,
        gpu=optional(st.one_of(st.sampled_from(["RTX 4090", "RTX 4070", "A100 80GB"]), text(0))),
        vram=optional(sizes()),
        gpus=st.integers(1, 1024),
        machines=st.integers(1, 1024),
        main_address=optional(st.one_of(st.just("10.0.0.1"), text(0))),
        main_port=optional(st.integers(1, 65535)),
    )


def pass_values() -> st.SearchStrategy:
    return st.one_of(scalar_values(), st.lists(scalar_values(), max_size=3))


def passthroughs() -> st.SearchStrategy[dict]:
    trainers = st.one_of(st.sampled_from(["kohya", "simpletuner"]), keys())
    return st.dictionaries(trainers, st.dictionaries(keys(), pass_values(), max_size=3), max_size=2)


def recipes() -> st.SearchStrategy[m.Recipe]:
    """Valid recipes covering every field of the spec."""
    return st.builds(
        m.Recipe,
        name=file_names(),
        base=bases(),
        datasets=st.lists(datasets(), min_size=1, max_size=2).map(tuple),
        trigger=optional(text().filter(str.strip)),  # R206: not only white space
        regularization=st.lists(regularizations(), max_size=2).map(tuple),
        adapter=adapters(),
        train=trains(),
        ema=optional(st.builds(m.Ema, decay=floats(0.0, 0.9999, exclude_min=True))),
        save=saves(),
        sample=optional(samples()),
        hardware=hardwares(),
        output=st.builds(m.Output, path=paths(), name=optional(file_names(0))),
        log=st.builds(m.Log, to=st.sampled_from(m.LOGGERS), path=optional(paths())),
        passthrough=passthroughs(),
    )
