"""Recipe-level checks and pydantic errors, reported at the statement that caused them (R2xx).

`check_recipe` runs the cross-statement checks that deserve their own code and a precise
span (steps and epochs both, a missing block, warmup longer than training); `report_validation`
maps each remaining pydantic error's `loc` through the `SourceMap` to a line and column and
rewrites its message as a sentence about the recipe's statement, not the model's field.
"""

from __future__ import annotations

from pydantic import ValidationError

from lorafile.compiler.diagnostics import Span
from lorafile.compiler.statements import TABLES, Ctx, Path
from lorafile.spec import units

REQUIRED = {
    "name": ("The recipe has no name.", 'start the file with `recipe "my_lora"`'),
    "base": (
        "The recipe names no base model.",
        'add `base sdxl "/models/sd_xl_base_1.0.safetensors"`',
    ),
    "datasets": ("The recipe has no dataset.", 'add `dataset "/data/images" { repeats 10 }`'),
    "train": ("The recipe has no `train` block.", "add `train { steps 3000 }`"),
    "output": ("The recipe names no output folder.", 'add `output "/output/my_lora"`'),
}

# Spec field -> the statement a user writes for it, where the two differ.
STATEMENT_OF = {
    "class_prompt": "class",
    "prompts": "prompt",
    "scheduler": "lr",
    "cycles": "lr",
    "power": "lr",
    "optimizer_args": "optimizer",
    "datasets": "dataset",
    "to": "log",
    "algo": "adapter",
    "family": "base",
}
# Parts of a statement's value: errors on them are named after the statement itself.
VALUE_PARTS = {
    "width",
    "height",
    "min",
    "max",
    "step",
    "upscale",
    "enabled",
    "latents",
    "text",
    "location",
    "value",
    "unit",
}


def check_recipe(ctx: Ctx, data: dict) -> None:
    """Cross-statement checks, run before pydantic so they get their own codes and spans."""
    if not data and not ctx.bad:
        ctx.bag.error(
            "R203",
            "The recipe is empty.",
            "start from an example in docs/recipe.md: a recipe needs at least "
            "`recipe`, `base`, `dataset`, `train` and `output`",
            Span(1, 1),
        )
        ctx.handled.update((key,) for key in REQUIRED)
        return
    for key, (message, help) in REQUIRED.items():
        if key not in data and (key,) not in ctx.bad:
            ctx.bag.error("R203", message, help, _header(ctx))
            ctx.handled.add((key,))
    if isinstance(data.get("train"), dict):
        _check_train(ctx, data["train"])
    sample = data.get("sample")
    if isinstance(sample, dict) and not sample.get("prompts") and ("sample",) not in ctx.bad:
        ctx.bag.error(
            "R203",
            "`sample` has no prompt.",
            'add `prompt "..."` lines to the block',
            ctx.smap.get(("sample",)),
        )
        ctx.handled.add(("sample",))
    for i, dataset in enumerate(data.get("datasets", [])):
        _check_buckets(ctx, dataset.get("buckets"), ("datasets", i, "buckets"))


def _header(ctx: Ctx) -> Span:
    """Where a missing top-level statement is reported, so editors can place it: the `recipe`
    line, else the first statement, else the start of the file."""
    found = ctx.smap.get(("name",)) or min(
        ctx.smap.values(), key=lambda s: (s.line, s.column), default=Span(1, 1)
    )
    return Span(found.line, found.column)


def _check_train(ctx: Ctx, train: dict) -> None:
    if ("train", "steps") in ctx.bad or ("train", "epochs") in ctx.bad:
        ctx.handled.add(("train",))
        return
    if "steps" in train and "epochs" in train:
        later = max(
            ctx.smap[("train", "steps")],
            ctx.smap[("train", "epochs")],
            key=lambda s: (s.line, s.column),
        )
        ctx.bag.error(
            "R204",
            "`steps` and `epochs` both set the length of training.",
            "keep one of them",
            later,
        )
        ctx.handled.add(("train",))
    elif "steps" not in train and "epochs" not in train:
        ctx.bag.error(
            "R203",
            "`train` does not say how long to train.",
            "add `steps 3000` or `epochs 10` to the train block",
            ctx.smap.get(("train",)),
        )
        ctx.handled.add(("train",))
    _check_warmup(ctx, train)


def _check_warmup(ctx: Ctx, train: dict) -> None:
    warmup, steps = train.get("warmup"), train.get("steps")
    if not (isinstance(warmup, dict) and warmup.get("unit") == "steps" and isinstance(steps, int)):
        return
    if steps >= 1 and warmup["value"] > steps:
        ctx.bag.error(
            "R205",
            f"Warmup ({warmup['value']} steps) is longer than training ({steps} steps).",
            f"warm up for fewer than {steps} steps, or write it as a percent such as `warmup 5%`",
            ctx.smap.get(("train", "warmup")),
        )
        ctx.handled.add(("train",))


def _check_buckets(ctx: Ctx, buckets: object, path: Path) -> None:
    if not isinstance(buckets, dict) or path in ctx.bad:
        return
    low, high = buckets.get("min", 256), buckets.get("max", 2048)
    if low > high:
        ctx.bag.error(
            "R204",
            f"The bucket range {low}..{high} runs backwards.",
            f"write the smaller size first: {high}..{low}",
            ctx.smap.get(path),
        )
        ctx.handled.add(path)


def report_validation(ctx: Ctx, err: ValidationError) -> None:
    """Report each pydantic error at the span of the statement that set the field."""
    errors = err.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    seen = set()
    for error, loc in zip(errors, locs, strict=True):
        if _suppressed(ctx, loc) or _consequence(error, loc, locs):
            continue
        code, message, help = describe(error, loc)
        span = ctx.smap.find(loc)
        if (code, message, span) not in seen:  # width and height of one `resolution 32`
            seen.add((code, message, span))
            ctx.bag.error(code, message, help, span)


def _consequence(error: dict, loc: Path, locs: list[Path]) -> bool:
    """pydantic also calls a list too short when one of its items failed: report the item."""
    return error["type"] == "too_short" and any(
        len(other) > len(loc) and other[: len(loc)] == loc for other in locs
    )


def _suppressed(ctx: Ctx, loc: Path) -> bool:
    if any(loc[: len(h)] == h and len(loc) <= len(h) + 1 for h in ctx.handled):
        return True
    return any(loc[: len(b)] == b or b[: len(loc)] == loc for b in ctx.bad)


def statement_name(loc: Path) -> str:
    """The statement a user wrote for the field at `loc` (`class` for `class_prompt`)."""
    if loc[:1] == ("name",):
        return "recipe"
    names = [part for part in loc if isinstance(part, str)]
    while len(names) > 1 and names[-1] in VALUE_PARTS:
        names.pop()
    if not names:
        return "recipe"
    return STATEMENT_OF.get(names[-1], names[-1])


# pydantic's bound errors: (words in the message, the ctx key holding the bound, help).
BOUNDS = {
    "greater_than_equal": ("at least", "ge", "use {} or more"),
    "greater_than": ("greater than", "gt", "use a value above {}"),
    "less_than_equal": ("at most", "le", "use {} or less"),
    "less_than": ("less than", "lt", "use a value below {}"),
}


# The spec's own error types (spec/models.py, PydanticCustomError): (code, message, help).
SPEC_ERRORS = {
    "nul_character": lambda name, value: (
        "R208",
        f"`{name}` holds a NUL character (\\u0000), which no path, file name or command "
        "line can carry.",
        "remove the \\u0000 escape from the string",
    ),
    "not_a_file_name": lambda name, value: (
        "R209",
        f"`{name}` {_show(value)} is used as a file name in the output folder, but it "
        "names a file outside it (a / or \\ in it) or no file (`.` or `..`).",
        "use a plain name such as `my_lora_v1`; put folders in the `output` path",
    ),
    "blank_string": lambda name, value: (
        "R206",
        f"`{name}` is only white space.",
        f"write the {name} word between the quotes, or remove the `{name}` statement",
    ),
}


def describe(error: dict, loc: Path) -> tuple[str, str, str]:
    """(code, message, help) for one pydantic error."""
    kind, name = error["type"], statement_name(loc)
    ctx = error.get("ctx") or {}
    shown = _show(error.get("input"))
    if kind in BOUNDS:
        words, key, advice = BOUNDS[kind]
        limit = _show(ctx.get(key))
        return (
            "R202",
            f"`{name}` must be {words} {limit}, but it is {shown}.",
            advice.format(limit),
        )
    if kind in SPEC_ERRORS:
        return SPEC_ERRORS[kind](name, error.get("input"))
    if kind in ("string_too_short", "too_short"):
        return (
            "R206",
            f"`{name}` must not be empty.",
            f"write a value between the quotes, or remove the `{name}` statement",
        )
    if kind == "missing":
        parent = statement_name(loc[:-1]) if len(loc) > 1 else "recipe"
        sdef = TABLES.get(parent, {}).get(name)
        example = sdef.example if sdef else name
        return (
            "R203",
            f"`{parent}` needs a `{name}` statement.",
            f"add `{example}` to the `{parent}` block",
        )
    if kind == "value_error":
        text = str(error.get("msg", "")).removeprefix("Value error, ")
        return ("R204", f"{text[:1].upper()}{text[1:]}.", f"see `{name}` in docs/recipe.md")
    return (
        "R207",
        f"`{name}`: {error.get('msg', 'invalid value')}.",
        f"see `{name}` in docs/recipe.md",
    )


def _show(value: object) -> str:
    if isinstance(value, float):
        return units.format_number(value)
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
