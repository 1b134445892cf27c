"""Recipe text to a validated `Recipe`, with the source position of every field.

Three stages, each reporting into one `DiagnosticBag` (python-hcl2's pipeline):

1. syntax.py: lark (LALR) parses the text into statements with spans (R1xx on bad syntax);
2. the tables below read each statement into plain data shaped like the spec, checking names
   and units (R105-R109, R201), and record each field's span in a `SourceMap`;
3. pydantic validates that data into a `Recipe`; each pydantic error is mapped back through
   the `SourceMap` to the statement that set the field (R2xx), so a user never sees a
   pydantic traceback.

Every problem of a recipe is reported at once (capped at 50 when rendered).
"""

from __future__ import annotations

from pydantic import ValidationError

from lorafile.compiler import statements as st
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
from lorafile.compiler.statements import (
    Bad,
    Ctx,
    Path,
    SourceMap,
    StmtDef,
    auto_switch,
    choice,
    expect_args,
    nested,
    read_block,
    read_choice,
    read_float,
    read_fraction,
    read_int,
    read_range,
    read_raw,
    read_resolution,
    read_size,
    read_string,
    scalar,
    set_field,
    string,
    switch,
)
from lorafile.compiler.syntax import Arg, Stmt, parse_statements
from lorafile.compiler.validate import check_recipe, report_validation
from lorafile.spec import models as m
from lorafile.spec import units

__all__ = ["SourceMap", "parse_into", "parse_recipe", "parse_recipe_with_positions"]


def parse_recipe(text: str, file: str | None = None) -> m.Recipe:
    """Parse and validate recipe text; raise `DiagnosticError` with every problem found."""
    return parse_recipe_with_positions(text, file)[0]


def parse_recipe_with_positions(text: str, file: str | None = None) -> tuple[m.Recipe, SourceMap]:
    """Like `parse_recipe`, also returning the span of each field (for lint and VRAM notes)."""
    bag = DiagnosticBag(file=file, source=text)
    recipe, smap = parse_into(text, bag)
    if recipe is None or bag.has_errors:
        raise DiagnosticError(bag.items)
    return recipe, smap


def parse_into(text: str, bag: DiagnosticBag) -> tuple[m.Recipe | None, SourceMap]:
    """Parse into an existing bag without raising: (recipe or None, source map)."""
    ctx = Ctx(bag)
    stmts = parse_statements(text, bag)
    if stmts is None:
        return None, ctx.smap
    data: dict = {}
    read_block(ctx, stmts, "recipe", data, ())
    check_recipe(ctx, data)
    recipe = None
    try:
        recipe = m.Recipe.model_validate(data)
    except ValidationError as err:
        report_validation(ctx, err)
    bag.items.sort(key=_position)
    return (None if bag.has_errors else recipe), ctx.smap


def _position(diag) -> tuple[int, int]:
    span = diag.span
    return (span.line, span.column) if span else (1 << 30, 0)


# ---- Top-level statements -------------------------------------------------------------------


def _base(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    example = 'base sdxl "/models/sd_xl_base_1.0.safetensors"'
    if len(stmt.args) == 1 and stmt.args[0].kind == "string":
        raise Bad(
            "R106",
            "`base` needs the model family before the path.",
            f"write `{example}`",
            stmt.span,
        )
    expect_args(stmt, 2, 2, example)
    family = read_choice(stmt.args[0], ("sdxl",), "model family")
    base = {"family": family, "path": read_string(stmt.args[1], "base sdxl")}
    set_field(ctx, out, path, "base", base, stmt)
    ctx.smap[("base", "path")] = stmt.args[1].span
    nested(ctx, stmt, "base", base, ("base",))


def _listed(key: str, table: str, example: str):
    """`dataset "path" { ... }` and `regularization "path" { ... }`: repeatable blocks."""

    def handle(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
        expect_args(stmt, 1, 1, example)
        item = {"path": read_string(stmt.args[0], stmt.name)}
        items = out.setdefault(key, [])
        here = (key, len(items))
        items.append(item)
        ctx.smap[here] = stmt.span
        ctx.smap[(*here, "path")] = stmt.args[0].span
        nested(ctx, stmt, table, item, here)

    return handle


def _adapter(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    expect_args(stmt, 1, 1, "adapter lora { rank 16 }")
    adapter = {"algo": read_choice(stmt.args[0], m.ADAPTER_ALGOS, "adapter type")}
    set_field(ctx, out, path, "adapter", adapter, stmt)
    nested(ctx, stmt, "adapter", adapter, ("adapter",))


def _ema(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    """`ema` or `ema decay 0.999`: an average of the adapter weights, saved beside it."""
    example = "ema decay 0.999"
    ema: dict = {}
    set_field(ctx, out, path, "ema", ema, stmt)
    if not stmt.args:
        return
    expect_args(stmt, 2, 2, example)
    read_choice(stmt.args[0], ("decay",), "ema option")
    ema["decay"] = read_float(stmt.args[1])
    ctx.smap[("ema", "decay")] = stmt.args[1].span


def _block_only(key: str, example: str):
    """`train { ... }`, `hardware { ... }`: a block with no values on its line."""

    def handle(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
        expect_args(stmt, 0, 0, example)
        value: dict = {}
        set_field(ctx, out, path, key, value, stmt)
        nested(ctx, stmt, key, value, (key,))

    return handle


def _interval(args: list[Arg], i: int, stmt: Stmt) -> tuple[dict, int]:
    """`every 500 steps` starting at args[i] (the word `every`); returns (interval, next i)."""
    if i + 1 >= len(args):
        raise Bad(
            "R106", "`every` needs a number and a unit.", "write `every 500 steps`", args[i].span
        )
    count = read_int(args[i + 1])
    if i + 2 >= len(args) or args[i + 2].kind != "atom" or units.is_number(str(args[i + 2].value)):
        raise Bad(
            "R108",
            f"`every {args[i + 1].text}` has no unit.",
            f"write `every {args[i + 1].text} steps` or `every {args[i + 1].text} epochs`",
            args[i + 1].span,
        )
    unit_arg = args[i + 2]
    try:
        unit = units.parse_interval_unit(str(unit_arg.value))
    except units.UnitError as err:
        raise Bad("R108", err.message, err.help, unit_arg.span) from None
    return {"every": count, "unit": unit}, i + 3


def _save(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    save: dict = {}
    set_field(ctx, out, path, "save", save, stmt)
    args, i = stmt.args, 0
    while i < len(args):
        word = read_choice(args[i], ("every", "keep"), "save option")
        if word == "every" and "every" not in save:
            save["every"], i = _interval(args, i, stmt)
            ctx.smap[("save", "every")] = args[i - 3].span
        elif word == "keep" and "keep" not in save:
            if i + 1 >= len(args):
                raise Bad("R106", "`keep` needs a number.", "write `keep 6`", args[i].span)
            save["keep"] = read_int(args[i + 1])
            ctx.smap[("save", "keep")] = args[i + 1].span
            i += 2
        else:
            raise Bad(
                "R106",
                f"Unexpected `{word}` here.",
                "write `save every 500 steps keep 6`",
                args[i].span,
            )
    nested(ctx, stmt, "save", save, ("save",))


def _sample(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    example = 'sample every 500 steps { prompt "..." }'
    sample: dict = {}
    set_field(ctx, out, path, "sample", sample, stmt)
    if not stmt.args or stmt.args[0].kind != "atom" or stmt.args[0].value != "every":
        raise Bad(
            "R106", "`sample` needs an interval: `every N steps`.", f"write `{example}`", stmt.span
        )
    sample["every"], end = _interval(stmt.args, 0, stmt)
    ctx.smap[("sample", "every")] = stmt.span
    if end < len(stmt.args):
        raise Bad(
            "R106",
            f"Unexpected `{stmt.args[end].text}` here.",
            f"write `{example}`",
            stmt.args[end].span,
        )
    nested(ctx, stmt, "sample", sample, ("sample",))


def _output(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    expect_args(stmt, 1, 1, 'output "/output/my_lora"')
    output = {"path": read_string(stmt.args[0], "output")}
    set_field(ctx, out, path, "output", output, stmt)
    nested(ctx, stmt, "output", output, ("output",))


def _log(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    expect_args(stmt, 1, 2, 'log tensorboard "/output/logs"')
    log = {"to": read_choice(stmt.args[0], m.LOGGERS, "logger")}
    if len(stmt.args) == 2:
        log["path"] = read_string(stmt.args[1], f"log {log['to']}")
    set_field(ctx, out, path, "log", log, stmt)


def _passthrough(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    expect_args(stmt, 1, 1, "passthrough kohya { key value }")
    arg = stmt.args[0]
    trainer = str(arg.value) if arg.kind != "list" else ""
    if not trainer:
        raise Bad(
            "R106",
            "`passthrough` needs a trainer name.",
            "write `passthrough kohya { }`",
            stmt.span,
        )
    blocks = out.setdefault("passthrough", {})
    if trainer in blocks:
        raise Bad(
            "R109",
            f"`passthrough {trainer}` is given twice.",
            "merge the two blocks into one",
            stmt.head_span,
        )
    blocks[trainer] = raw = {}
    ctx.smap[("passthrough", trainer)] = stmt.span
    _raw_block(ctx, stmt.block or [], raw, ("passthrough", trainer), allow_list=True)


def _raw_block(ctx: Ctx, stmts: list[Stmt], out: dict, path: Path, allow_list: bool) -> None:
    """`key value` lines holding a trainer's own settings, kept verbatim."""
    for stmt in stmts:
        try:
            if stmt.block is not None:
                raise Bad(
                    "R107",
                    f"`{stmt.name}` takes no `{{ }}` block here.",
                    "write `key value` on one line",
                    stmt.head_span,
                )
            expect_args(stmt, 1, 1, f"{stmt.name} value")
            if stmt.name in out:
                raise Bad(
                    "R109",
                    f"`{stmt.name}` is given twice in this block.",
                    "keep one of them",
                    stmt.head_span,
                )
            out[stmt.name] = read_raw(stmt.args[0], allow_list)
            ctx.smap[(*path, stmt.name)] = stmt.span
        except Bad as err:
            ctx.report(err, (*path, stmt.name))


# ---- Statements inside blocks ---------------------------------------------------------------


def _captions(arg: Arg) -> str:
    return str(arg.value) if arg.kind != "list" else read_string(arg)


def _buckets(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    """`buckets [off] [MIN..MAX] [step N] [no_upscale]`."""
    expect_args(stmt, 1, 5, "buckets 256..2048 step 64")
    buckets: dict = {}
    set_field(ctx, out, path, "buckets", buckets, stmt)
    args, i = stmt.args, 0
    while i < len(args):
        arg = args[i]
        text = arg.text if arg.kind == "atom" else ""
        if units.is_number(text):
            raise Bad(
                "R108",
                f"`{text}` alone is not a bucket range.",
                "write the smallest and largest bucket size as `256..2048`",
                arg.span,
            )
        key = (
            "range"
            if ".." in text
            else read_choice(arg, ("on", "off", "step", "no_upscale"), "buckets option")
        )
        stored = {"on": "enabled", "off": "enabled", "no_upscale": "upscale", "range": "min"}
        if stored.get(key, key) in buckets:
            raise Bad("R109", f"`{text}` is given twice.", "keep one of them", arg.span)
        if key == "range":
            buckets["min"], buckets["max"] = read_range(arg)
        elif key == "step":
            if i + 1 >= len(args):
                raise Bad("R106", "`step` needs a number.", "write `step 64`", arg.span)
            buckets["step"] = read_int(args[i + 1])
            i += 1
        elif key == "no_upscale":
            buckets["upscale"] = False
        else:
            buckets["enabled"] = key == "on"
        i += 1


def _timesteps(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    """`timesteps MIN..MAX`: the range timesteps are drawn from, MAX excluded."""
    expect_args(stmt, 1, 1, "timesteps 200..1000")
    low, high = _timestep_range(stmt.args[0])
    set_field(ctx, out, path, "min_timestep", low, stmt)
    set_field(ctx, out, path, "max_timestep", high, stmt)


def _timestep_range(arg: Arg) -> tuple[int, int]:
    try:
        return read_range(arg)
    except Bad as err:
        err.help = "write a range of timesteps such as 200..1000 (the end is excluded)"
        raise


def _timestep_bias(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    """`timestep_bias later|earlier MULTIPLIER [portion P%]` or
    `timestep_bias range BEGIN..END MULTIPLIER`."""
    example = "timestep_bias later 2 portion 25%"
    expect_args(stmt, 2, 4, example)
    args = stmt.args
    strategy = read_choice(args[0], m.BIAS_STRATEGIES, "timestep bias")
    bias: dict = {"strategy": strategy}
    rest = args[1:]
    if strategy == "range":
        example = "timestep_bias range 200..500 2"
        expect_args(stmt, 3, 3, example)
        bias["begin"], bias["end"] = _timestep_range(rest[0])
        rest = rest[1:]
    bias["multiplier"] = read_float(rest[0])
    if len(rest) > 1:
        if len(rest) != 3 or rest[1].text != "portion":
            raise Bad("R106", "Expected `portion P%` after the multiplier.", f"write `{example}`",
                      rest[1].span)  # fmt: skip
        bias["portion"] = read_fraction(rest[2])
    set_field(ctx, out, path, "timestep_bias", bias, stmt)


def _shuffle(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    """`shuffle_captions on [keep N]`."""
    example = "shuffle_captions on keep 1"
    expect_args(stmt, 1, 3, example)
    set_field(ctx, out, path, "shuffle_captions", st.read_switch(stmt.args[0]), stmt)
    if len(stmt.args) == 1:
        return
    read_choice(stmt.args[1], ("keep",), "shuffle_captions option")
    expect_args(stmt, 3, 3, example)
    set_field(ctx, out, path, "keep_tokens", read_int(stmt.args[2]), stmt)


def _targets(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    targets: list[str] = []
    expect_args(stmt, 1, len(m.TARGETS), "targets attention ff conv")
    for arg in stmt.args:
        target = read_choice(arg, m.TARGETS, "target")
        if target in targets:
            raise Bad(
                "R109", f"Target `{target}` is listed twice.", "list each target once", arg.span
            )
        targets.append(target)
    set_field(ctx, out, path, "targets", tuple(targets), stmt)


def _lr(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    """`lr 1e-4 [scheduler [cycles|power]] [warmup N|N%]`."""
    expect_args(stmt, 1, 5, "lr 1e-4 cosine warmup 100")
    set_field(ctx, out, path, "lr", read_float(stmt.args[0]), stmt)
    args, i = stmt.args, 1
    if i < len(args) and args[i].text != "warmup":
        scheduler = read_choice(args[i], m.SCHEDULERS, "scheduler")
        out["scheduler"] = scheduler
        ctx.smap[(*path, "scheduler")] = args[i].span
        i += 1
        if i < len(args) and units.is_number(args[i].text):
            _scheduler_argument(ctx, out, path, scheduler, args[i])
            i += 1
    if i < len(args):
        read_choice(args[i], ("warmup",), "lr option")
        if i + 1 >= len(args):
            raise Bad(
                "R106", "`warmup` needs a value.", "write `warmup 100` or `warmup 5%`", args[i].span
            )
        out["warmup"] = _warmup(args[i + 1])
        ctx.smap[(*path, "warmup")] = args[i + 1].span
        i += 2
    if i < len(args):
        raise Bad(
            "R106",
            f"Unexpected `{args[i].text}` at the end of `lr`.",
            "write `lr 1e-4 cosine warmup 100`",
            args[i].span,
        )


def _scheduler_argument(ctx: Ctx, out: dict, path: Path, scheduler: str, arg: Arg) -> None:
    if scheduler == "cosine_with_restarts":
        out["cycles"] = read_int(arg)
        ctx.smap[(*path, "cycles")] = arg.span
    elif scheduler == "polynomial":
        out["power"] = read_float(arg)
        ctx.smap[(*path, "power")] = arg.span
    else:
        raise Bad(
            "R106",
            f"The `{scheduler}` scheduler takes no number.",
            "only cosine_with_restarts (cycles) and polynomial (power) take one",
            arg.span,
        )


def _warmup(arg: Arg) -> dict:
    if arg.kind == "atom" and arg.text.endswith("%"):
        percent = st.unit_reader(units.parse_percent, "a percent")(arg)
        if percent > 100:
            raise Bad(
                "R202",
                f"Warmup {arg.text} is longer than all of training.",
                "warm up for at most 100%; 5% to 10% is usual",
                arg.span,
            )
        return {"value": percent, "unit": "percent"}
    return {"value": read_int(arg), "unit": "steps"}


def _optimizer(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    expect_args(stmt, 1, 1, "optimizer adamw8bit { weight_decay 0.01 }")
    set_field(
        ctx, out, path, "optimizer", read_choice(stmt.args[0], m.OPTIMIZERS, "optimizer"), stmt
    )
    if stmt.block is not None:
        out["optimizer_args"] = args = {}
        ctx.smap[(*path, "optimizer_args")] = stmt.span
        _raw_block(ctx, stmt.block, args, (*path, "optimizer_args"), allow_list=False)


def _cache(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    """`cache latents text [disk]`, `cache auto [disk]` or `cache off`.

    Naming what to cache says it for both: `cache latents` means the text is not cached."""
    expect_args(stmt, 1, 3, "cache latents text")
    words: list[str] = []
    for arg in stmt.args:
        word = read_choice(arg, ("latents", "text", "disk", "auto", "off"), "cache option")
        if word in words:
            raise Bad("R109", f"`{word}` is listed twice.", "list it once", arg.span)
        alone = {"auto", "off"} & ({word} | set(words))
        if alone and len({w for w in (*words, word) if w != "disk"}) > 1:
            raise Bad(
                "R109",
                f"`cache {alone.pop()}` cannot be combined with other cache choices.",
                "write `cache auto`, `cache off`, or the caches to keep",
                arg.span,
            )
        words.append(word)
    auto = "auto" in words or words == ["disk"]  # `cache disk`: the automatic choice, on disk
    cache: dict = {w: "auto" if auto else w in words for w in ("latents", "text")}
    if "disk" in words:
        cache["location"] = "disk"
    set_field(ctx, out, path, "cache", cache, stmt)


def _vram(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    expect_args(stmt, 1, 2, "vram 12GB")
    args = stmt.args
    if len(args) == 2:
        joined = Arg("atom", f"{args[0].text} {args[1].text}", st.join_spans(args))
        set_field(ctx, out, path, "vram", read_size(joined), stmt)
    else:
        set_field(ctx, out, path, "vram", read_size(args[0]), stmt)


def _prompt(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
    expect_args(stmt, 1, 1, 'prompt "a lighthouse at dusk"')
    prompts = out.setdefault("prompts", [])
    ctx.smap[(*path, "prompts", len(prompts))] = stmt.span
    ctx.smap.setdefault((*path, "prompts"), stmt.span)
    prompts.append(read_string(stmt.args[0], "prompt"))


def _precision(arg: Arg) -> str:
    try:
        return read_choice(arg, m.PRECISIONS, "precision")
    except Bad as err:
        if arg.text in m.BASE_PRECISIONS:
            err.help += f"; `{arg.text}` is a `base_precision` (the frozen weights' dtype)"
        raise


def _def(handler, example: str, block: str | None = None, required: bool = False) -> StmtDef:
    return StmtDef(handler, example, block, required)


st.TABLES.update(
    {
        "recipe": {
            "recipe": string("name", 'recipe "my_lora"'),
            "base": _def(_base, 'base sdxl "/models/sd_xl_base_1.0.safetensors"', "base"),
            "dataset": _def(
                _listed("datasets", "dataset", 'dataset "/data/images" { }'),
                'dataset "/data/images" { repeats 10 }',
                "dataset",
            ),
            "trigger": string("trigger", 'trigger "ohwx"'),
            "regularization": _def(
                _listed("regularization", "regularization", 'regularization "/data/reg"'),
                'regularization "/data/reg" { class "woman" }',
                "regularization",
                True,
            ),
            "adapter": _def(_adapter, "adapter lora { rank 16 }", "adapter"),
            "train": _def(
                _block_only("train", "train { steps 3000 }"), "train { steps 3000 }", "train", True
            ),
            "ema": _def(_ema, "ema decay 0.999"),
            "save": _def(_save, "save every 500 steps keep 6", "save"),
            "sample": _def(_sample, 'sample every 500 steps { prompt "..." }', "sample", True),
            "hardware": _def(
                _block_only("hardware", 'hardware { gpu "RTX 4090" }'),
                'hardware { gpu "RTX 4090" }',
                "hardware",
                True,
            ),
            "output": _def(_output, 'output "/output/my_lora"', "output"),
            "log": _def(_log, "log tensorboard", None),
            "passthrough": _def(
                _passthrough, "passthrough kohya { key value }", "passthrough", True
            ),
        },
        "base": {
            "vae": string("vae", 'vae "/models/sdxl-vae-fp16-fix"'),
            "variant": choice("variant", m.WEIGHT_VARIANTS, "weight variant", "variant fp16"),
            "prediction": choice("prediction", ("epsilon", "v"), "prediction type", "prediction v"),
            "zero_terminal_snr": switch("zero_terminal_snr", "zero_terminal_snr on"),
            "clip_skip": scalar("clip_skip", read_int, "clip_skip 2"),
        },
        "dataset": {
            "kind": choice("kind", m.DATASET_KINDS, "dataset kind", "kind style"),
            "captions": scalar("captions", _captions, "captions txt"),
            "repeats": scalar("repeats", read_int, "repeats 10"),
            "resolution": scalar("resolution", read_resolution, "resolution 1024"),
            "buckets": _def(_buckets, "buckets 256..2048 step 64"),
            "flip": switch("flip", "flip on"),
            "color_aug": switch("color_aug", "color_aug on"),
            "shuffle_captions": _def(_shuffle, "shuffle_captions on keep 1"),
            "keep_tokens": scalar("keep_tokens", read_int, "keep_tokens 1"),
            "caption_dropout": scalar("caption_dropout", read_fraction, "caption_dropout 5%"),
        },
        "regularization": {
            "class": string("class_prompt", 'class "woman"'),
            "ratio": scalar("ratio", st.read_ratio, "ratio 1:1"),
            "weight": scalar("weight", read_float, "weight 1.0"),
        },
        "adapter": {
            "rank": scalar("rank", read_int, "rank 16"),
            "alpha": scalar("alpha", read_float, "alpha 16"),
            "targets": _def(_targets, "targets attention ff"),
            "conv_rank": scalar("conv_rank", read_int, "conv_rank 8"),
            "conv_alpha": scalar("conv_alpha", read_float, "conv_alpha 4"),
            "dropout": scalar("dropout", read_fraction, "dropout 10%"),
            "text_encoder": switch("text_encoder", "text_encoder on"),
            "factor": scalar("factor", read_int, "factor 8"),
            "dora": switch("dora", "dora on"),
        },
        "train": {
            "steps": scalar("steps", read_int, "steps 3000"),
            "epochs": scalar("epochs", read_int, "epochs 10"),
            "batch": scalar("batch", read_int, "batch 2"),
            "accumulate": scalar("accumulate", read_int, "accumulate 4"),
            "lr": _def(_lr, "lr 1e-4 cosine warmup 100"),
            "unet_lr": scalar("unet_lr", read_float, "unet_lr 1e-4"),
            "text_encoder_lr": scalar("text_encoder_lr", read_float, "text_encoder_lr 5e-5"),
            "optimizer": _def(_optimizer, "optimizer adamw8bit", "optimizer"),
            "precision": scalar("precision", _precision, "precision bf16"),
            "base_precision": choice(
                "base_precision", m.BASE_PRECISIONS, "base precision", "base_precision fp8"
            ),
            "checkpointing": auto_switch("checkpointing", "checkpointing on"),
            "graphs": switch("graphs", "graphs off"),
            "cache": _def(_cache, "cache latents text"),
            "noise_offset": scalar("noise_offset", read_float, "noise_offset 0.0357"),
            "noise_offset_probability": scalar(
                "noise_offset_probability", read_fraction, "noise_offset_probability 25%"
            ),
            "multires_noise_iterations": scalar(
                "multires_noise_iterations", read_int, "multires_noise_iterations 6"
            ),
            "multires_noise_discount": scalar(
                "multires_noise_discount", read_float, "multires_noise_discount 0.3"
            ),
            "ip_noise_gamma": scalar("ip_noise_gamma", read_float, "ip_noise_gamma 0.1"),
            "timesteps": _def(_timesteps, "timesteps 200..1000"),
            "timestep_bias": _def(_timestep_bias, "timestep_bias later 2 portion 25%"),
            "loss": choice("loss", m.LOSS_KINDS, "loss", "loss huber"),
            "huber_schedule": choice(
                "huber_schedule", m.HUBER_SCHEDULES, "Huber schedule", "huber_schedule snr"
            ),
            "huber_c": scalar("huber_c", read_float, "huber_c 0.1"),
            "debiased_estimation": switch("debiased_estimation", "debiased_estimation on"),
            "min_snr_gamma": scalar("min_snr_gamma", read_float, "min_snr_gamma 5"),
            "max_grad_norm": scalar("max_grad_norm", read_float, "max_grad_norm 1.0"),
            "seed": scalar("seed", read_int, "seed 42"),
            "memory": choice("memory", ("manual", "auto"), "memory mode", "memory auto"),
        },
        "save": {
            "precision": choice("precision", m.SAVE_PRECISIONS, "save precision", "precision fp16"),
            "layout": choice("layout", m.LAYOUTS, "layout", "layout kohya"),
            "format": choice("format", ("safetensors",), "file format", "format safetensors"),
        },
        "sample": {
            "sampler": choice("sampler", m.SAMPLERS, "sampler", "sampler euler_a"),
            "steps": scalar("steps", read_int, "steps 28"),
            "cfg": scalar("cfg", read_float, "cfg 7"),
            "seed": scalar("seed", read_int, "seed 42"),
            "size": scalar("size", read_resolution, "size 1024x1024"),
            "negative": string("negative", 'negative "blurry"'),
            "prompt": _def(_prompt, 'prompt "a lighthouse at dusk"'),
        },
        "hardware": {
            "gpu": string("gpu", 'gpu "RTX 4090"'),
            "vram": _def(_vram, "vram 12GB"),
            "gpus": scalar("gpus", read_int, "gpus 2"),
            "machines": scalar("machines", read_int, "machines 1"),
            "main_address": string("main_address", 'main_address "10.0.0.1"'),
            "main_port": scalar("main_port", read_int, "main_port 29500"),
        },
        "output": {"name": string("name", 'name "my_lora"')},
        "optimizer": {},
        "passthrough": {},
    }
)
