"""Read a whole kohya project into a Recipe: config.toml, its dataset config (or
`<repeats>_<class>` folders), sample prompts and the accelerate config, with every I6xx problem
collected. The low-level TOML reading is in `read`, the field mapping in `mapping`."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from lorafile.backends.kohya import mapping as km
from lorafile.backends.kohya import read as kr
from lorafile.backends.kohya import schema as schema
from lorafile.backends.kohya import write as kw
from lorafile.backends.kohya.compare import same, same_dataset_value
from lorafile.backends.kohya.options import OPTIONS
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, Span, Suggester
from lorafile.files import exists, is_dir, is_file
from lorafile.spec.models import Recipe


def read_config(
    path: Path,
    bag: DiagnosticBag,
    dataset_config: str | Path | None = None,
    sample_prompts: str | Path | None = None,
    accelerate_config: str | Path | None = None,
) -> Recipe:
    """The recipe a kohya config means, with every problem reported into `bag`."""
    if is_dir(path):
        path = path / "config.toml"
    source, doc = kr.load_source(path, bag)
    sub = source.bag()
    flat, seen = kr.flatten_config(source, doc, sub)
    ctx = kr.Context(
        bag=sub,
        config=source,
        args=schema.defaults(),
        flat=flat,
        section_of=seen,
        meta=kr.read_meta(source.text),
    )
    kr.check_keys(ctx)
    ctx.args.update({k: v for k, v in flat.items() if k not in OPTIONS})
    extra = DiagnosticBag()
    subsets = dataset_subsets(ctx, path.parent, dataset_config, extra)
    check_constraints(ctx, subsets)
    prompts = _prompts(ctx, path.parent, sample_prompts, extra)
    accelerate = _accelerate(path.parent, accelerate_config)
    try:
        recipe = assemble(ctx, subsets, prompts, accelerate, path)
        kohya = passthrough(ctx, recipe, subsets)
        if kohya:
            recipe = Recipe.model_validate({**recipe.model_dump(), "passthrough": {"kohya": kohya}})
    except ValidationError as err:
        # A value no recipe can hold (a NUL, an output_name with `/`): report, do not crash.
        km.unrepresentable(ctx, err)
        recipe = None
    bag.extend(sub.items)
    bag.extend(extra.items)
    if recipe is None:
        raise DiagnosticError(bag.items)
    return recipe


def assemble(ctx: kr.Context, subsets, prompts, accelerate, path: Path) -> Recipe:
    train_subsets = [s for s in subsets if not s.is_reg]
    if not train_subsets:
        ctx.error(
            "I611",
            None,
            "The config defines no training images.",
            "set train_data_dir or pass --dataset-config",
        )
        placeholder = {"datasets": [{"resolution": [1024, 1024], "subsets": [{"image_dir": "."}]}]}
        train_subsets = schema.blueprint(ctx.args, placeholder)
    name = str(ctx.meta.get("name") or ctx.args.get("output_name") or path.stem)
    out = km.output(ctx, name)
    return Recipe(
        name=name,
        base=km.base(ctx),
        datasets=tuple(km.dataset(ctx, s, i) for i, s in enumerate(train_subsets)),
        trigger=km.trigger(subsets),
        regularization=tuple(km.regularization(ctx, s) for s in subsets if s.is_reg),
        adapter=km.adapter(ctx),
        train=km.train(ctx, subsets),
        save=km.save(ctx),
        sample=km.sample(ctx, prompts),
        hardware=km.hardware(ctx, accelerate),
        output=out,
        log=km.log(ctx, out.path),
    )


def dataset_subsets(ctx: kr.Context, folder: Path, option, bag: DiagnosticBag) -> list:
    """The subsets sd-scripts would train on, from a dataset config or the folder convention."""
    args = ctx.args
    chosen = option or args.get("dataset_config")
    if not chosen and not args.get("train_data_dir") and is_file(folder / "dataset.toml"):
        chosen = folder / "dataset.toml"
        ctx.info(
            "I625",
            None,
            "Using dataset.toml beside the config as its --dataset_config.",
            "pass --dataset-config to choose another file",
        )
    if chosen:
        return _from_dataset_config(ctx, _resolve(chosen, folder), bag)
    if args.get("in_json"):
        ctx.error(
            "I626",
            "in_json",
            "Fine-tuning metadata datasets (`in_json`) have no recipe equivalent.",
            "use image folders with caption files (DreamBooth style)",
        )
    user_config, problems = schema.folder_config(args, folder)
    for problem in problems:
        _folder_problem(ctx, problem)
    return schema.blueprint(args, user_config)


def _resolve(name, folder: Path) -> Path:
    path = Path(name)
    if not path.is_absolute() and not exists(path) and exists(folder / path):
        return folder / path
    return path


def _folder_problem(ctx: kr.Context, problem: str) -> None:
    kind, key, name = problem.split(":", 2)
    if kind == "missing":
        ctx.warning(
            "I611",
            key,
            f"The folder `{name}` ({key}) is not here, so lorafile cannot "
            "read its `<repeats>_<class tokens>` subfolders; the recipe uses the folder "
            "itself as one dataset.",
            "import where the dataset folders exist, or pass --dataset-config",
        )
    else:
        ctx.warning(
            "I611",
            key,
            f"sd-scripts ignores the folder `{name}` in {key}: its name "
            "does not start with `<repeats>_`.",
            "rename it like `10_ohwx woman`",
        )


def _from_dataset_config(ctx: kr.Context, path: Path, bag: DiagnosticBag) -> list:
    for key in ("train_data_dir", "reg_data_dir", "in_json"):
        if ctx.args.get(key):
            ctx.warning(
                "I612",
                key,
                f"sd-scripts ignores `{key}` because a dataset config is given.",
                f"remove `{key}`",
            )
    source, doc = kr.load_source(path, bag)
    sub = source.bag()
    check_dataset_schema(doc, source, sub)
    bag.extend(sub.items)
    if sub.has_errors:  # sd-scripts stops at its schema too; a blueprint would misread types
        return []
    return schema.blueprint(ctx.args, doc)


def check_dataset_schema(doc: dict, source: kr.Source, bag: DiagnosticBag) -> None:
    """config_util's voluptuous schema: unknown keys and wrong types are errors (I609)."""
    suggest = Suggester()  # one budget of "did you mean" lookups for the whole file
    for key in doc:
        if key not in ("general", "datasets"):
            _schema_error(
                bag,
                source,
                (key,),
                f"`{key}` is not allowed at the top of a dataset "
                "config (only [general] and [[datasets]]).",
                suggest(key, ("general", "datasets")),
            )
    _check_level(doc.get("general") or {}, "g", ("general",), source, bag, suggest)
    for i, dataset in enumerate(_tables(doc, "datasets", ("datasets",), source, bag)):
        _check_level(dataset, "d", ("datasets", i), source, bag, suggest)
        where = ("datasets", i, "subsets")
        for j, subset in enumerate(_tables(dataset, "subsets", where, source, bag)):
            _check_level(subset, "s", (*where, j), source, bag, suggest)


def _tables(parent: dict, key: str, path: tuple, source: kr.Source, bag) -> list:
    """`parent[key]` when it is a list of tables (`[[datasets]]`, `[[datasets.subsets]]`);
    else an I609 error and no tables."""
    value = parent.get(key) or []
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    table = ".".join(p for p in path if isinstance(p, str))  # ("datasets", 0, "subsets")
    message = (
        f"`{key} = {kr._toml(value)}` must be a list of tables (`[[{table}]]`); "
        "sd-scripts rejects it."
    )
    _schema_error(bag, source, path, message)
    return []


def _check_level(table: dict, level: str, path: tuple, source: kr.Source, bag, suggest) -> None:
    if not isinstance(table, dict):
        message = f"`{path[-1]} = {kr._toml(table)}` must be a table; sd-scripts rejects it."
        _schema_error(bag, source, path, message)
        return
    for key, value in table.items():
        if key == "subsets" and level == "d":
            continue
        spec = schema.DATASET_KEYS.get(key)
        if spec is None or level not in spec[1]:
            allowed = [k for k, (_, lv) in schema.DATASET_KEYS.items() if level in lv]
            message = (
                f'`{key}` is not allowed here; sd-scripts stops with "extra keys not allowed".'
            )
            if key == "prior_loss_weight":
                message += " prior_loss_weight belongs in the training config."
            _schema_error(bag, source, (*path, key), message, suggest(key, allowed))
            continue
        types = spec[0]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            _schema_error(
                bag,
                source,
                (*path, key),
                f"`{key} = {kr._toml(value)}` must be {names}; sd-scripts rejects it.",
            )


def _schema_error(bag, source, path, message, guess: str | None = None) -> None:
    line = source.lines.get(path)
    help = (
        f"did you mean `{guess}`?"
        if guess
        else "see the dataset config keys in docs/backends/kohya.md"
    )
    bag.error("I609", message, help, span=Span(line, 1) if line else None)


def check_constraints(ctx: kr.Context, subsets: list) -> None:
    """Combinations sd-scripts asserts against (kohya.md §10)."""
    args = ctx.args
    caches_text = args.get("cache_text_encoder_outputs") or args.get(
        "cache_text_encoder_outputs_to_disk"
    )
    if caches_text:
        for subset in subsets:
            p = subset.params
            if (
                p.get("shuffle_caption")
                or (p.get("caption_dropout_rate") or 0) > 0
                or (p.get("caption_tag_dropout_rate") or 0) > 0
                or (p.get("token_warmup_step") or 0) > 0
            ):
                ctx.error(
                    "I606",
                    "cache_text_encoder_outputs",
                    "cache_text_encoder_outputs "
                    "with caption shuffling, caption dropout or token warmup: sd-scripts "
                    "asserts they cannot be combined.",
                    "turn off shuffle_caption and caption dropout, or stop caching text",
                )
                break
        if not args.get("network_train_unet_only"):
            ctx.error(
                "I606",
                "cache_text_encoder_outputs",
                "cache_text_encoder_outputs while "
                'training the text encoders: sd-scripts asserts "network for Text Encoder '
                'cannot be trained with caching Text Encoder outputs".',
                "set network_train_unet_only = true",
            )
    _check_flags(ctx, subsets)


def _check_flags(ctx: kr.Context, subsets: list) -> None:
    args = ctx.args
    precision = args.get("mixed_precision")
    if args.get("fp8_base") and precision == "no":
        ctx.error(
            "I628",
            "fp8_base",
            "fp8_base needs mixed precision; sd-scripts asserts it.",
            'set mixed_precision = "bf16"',
        )
    for flag, need in (("full_bf16", "bf16"), ("full_fp16", "fp16")):
        if args.get(flag) and precision != need:
            ctx.error(
                "I628",
                flag,
                f'{flag} needs mixed_precision = "{need}"; sd-scripts asserts it.',
                f'set mixed_precision = "{need}"',
            )
    if args.get("v2"):
        ctx.error(
            "I628",
            "v2",
            "v2 is for Stable Diffusion 2; sd-scripts refuses it for SDXL.",
            "remove v2",
        )
    caches = args.get("cache_latents") or args.get("cache_latents_to_disk")
    steps = {s.block.get("bucket_reso_steps") for s in subsets}
    for step in sorted(x for x in steps if isinstance(x, int) and x % 32):
        ctx.error(
            "I629",
            "bucket_reso_steps",
            f"bucket_reso_steps {step} is not divisible by 32; sd-scripts asserts that for SDXL.",
            "use 64",
        )
    for subset in subsets:
        if caches and (subset.params.get("color_aug") or subset.params.get("random_crop")):
            ctx.error(
                "I627",
                "cache_latents",
                "cache_latents with color_aug or random_crop: "
                "sd-scripts asserts they cannot be combined.",
                "turn off the augmentation or the latent cache",
            )
            break


def _prompts(ctx: kr.Context, folder: Path, option, bag: DiagnosticBag):
    name = option or ctx.args.get("sample_prompts")
    if not name:
        return None
    path = _resolve(name, folder)
    if not is_file(path):
        return None
    return kr.load_prompts(path, bag)


def _accelerate(folder: Path, option) -> dict:
    path = Path(option) if option else folder / "accelerate.yaml"
    return kr.read_accelerate(path) if is_file(path) else {}


# --- pass-through: what the recipe does not say -------------------------------------------------


def passthrough(ctx: kr.Context, recipe: Recipe, subsets: list) -> dict:
    """Every effective value that writing `recipe` would change, keyed for the writer."""
    out: dict = {}
    written = kw.flat_config(recipe)
    written_args = {**schema.defaults(), **written}
    skip = km.flat_settings_skipped() | ctx.corrected | ctx.consumed
    for key in sorted(set(ctx.flat) | set(written)):
        if key not in OPTIONS or key in skip:
            continue
        original = ctx.args.get(key)
        if original is not None and not same(
            key, original, written_args.get(key), ctx.args, written_args
        ):
            out[key] = original
    _dataset_passthrough(ctx, recipe, subsets, written_args, out)
    for key, value in out.items():
        _report_passthrough(ctx, key, value)
    return out


def _report_passthrough(ctx: kr.Context, key: str, value: object) -> None:
    """I608 for one kept setting (a warning for plain attention, a hint for class tokens)."""
    if (
        key == "sdpa"
        and value is False
        and not (ctx.args.get("xformers") or ctx.args.get("mem_eff_attn"))
    ):
        ctx.warning(
            "I608",
            None,
            "The config turns on neither sdpa nor xformers: sd-scripts "
            "then uses plain attention, which needs much more memory. Kept as "
            "`sdpa = false` in the pass-through block.",
            "remove `sdpa` from the pass-through block to get sdpa",
        )
        return
    if key.endswith(".class_tokens") and key.startswith("datasets."):
        ctx.info(
            "I608",
            None,
            f"Class tokens {value!r} caption the images of dataset "
            f"{int(key.split('.')[1]) + 1} that have no caption file; kept as a kohya "
            "pass-through setting.",
            f"if they are your trigger word, add `trigger {kr._toml(value)}` to the recipe",
        )
        return
    ctx.info(
        "I608",
        None if "." in key else key,
        f"`{key} = {kr._toml(value)}` has no recipe equivalent; it "
        "is kept as a kohya pass-through setting.",
        "other targets do not use it",
    )


def _dataset_passthrough(ctx, recipe: Recipe, subsets: list, written_args: dict, out: dict) -> None:
    train = [s for s in subsets if not s.is_reg]
    for i, subset in enumerate(train[: len(recipe.datasets)]):
        entry = kw.dataset_entry(recipe, i)
        _diff_subset(ctx, f"datasets.{i}.", subset, entry, written_args, out)
    block = train[0].block if train else {}
    for j, subset in enumerate(s for s in subsets if s.is_reg):
        entry = {**block, **kw.regularization_entry(recipe, j)}
        _diff_subset(ctx, f"regularization.{j}.", subset, entry, written_args, out)


def _diff_subset(ctx, prefix: str, subset, entry: dict, written_args: dict, out: dict) -> None:
    effective = {**subset.block, **subset.params}
    for key in schema.DATASET_KEYS:
        if key in ("image_dir", "is_reg"):
            continue
        new = entry.get(key)
        if new is None:
            new = schema.argparse_fallback(written_args, key)
        old = effective.get(key)
        if old is None or same_dataset_value(key, old, new):
            continue
        if key == "resolution" and (size := km.resolution(old)):
            old = [size.width, size.height]  # an unusable one (-1) is I623 already: kept as is
        if isinstance(old, dict):
            ctx.warning(
                "I621",
                None,
                f"`{key}` tables are not kept by lorafile.",
                "add them back by hand after importing",
            )
            continue
        out[prefix + key] = old
