"""The meaning of each recipe statement: statement records to the spec's plain data.

One table per block (`TABLES["recipe"]` for the top level, `TABLES["dataset"]`, ...; filled
in compiler/parse.py) maps a statement name to a handler that reads its values (checking units
as it goes) into a dict shaped like the pydantic models, and records the statement's `Span`
under the field's path in the `SourceMap`. This module holds the machinery the handlers share.
Problems are collected in the `DiagnosticBag` and reading goes on, so one run reports every
bad statement. compiler/format.py is the inverse of the tables; docs/recipe.md documents them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lorafile.compiler.diagnostics import DiagnosticBag, Span, closest, hint
from lorafile.compiler.syntax import Arg, Stmt
from lorafile.spec import models as m
from lorafile.spec import units
from lorafile.spec.units import UnitError

Path = tuple[str | int, ...]


class SourceMap(dict[Path, Span]):
    """Field path (`("train", "lr")`, `("datasets", 0, "repeats")`) to the statement's span."""

    def find(self, path: Path) -> Span | None:
        """The span of `path`, or of its nearest enclosing statement that has one."""
        path = tuple(path)
        while path:
            if path in self:
                return self[path]
            path = path[:-1]
        return None


class Bad(Exception):
    """One statement could not be read; carries its diagnostic."""

    def __init__(self, code: str, message: str, help: str, span: Span):
        super().__init__(message)
        self.code, self.message, self.help, self.span = code, message, help, span


@dataclass
class Ctx:
    """What the handlers share while reading one recipe."""

    bag: DiagnosticBag
    smap: SourceMap = field(default_factory=SourceMap)
    bad: set[Path] = field(default_factory=set)
    """Paths whose statement was reported; pydantic errors under them are not repeated."""
    handled: set[Path] = field(default_factory=set)
    """Model-level checks already reported with a better span; pydantic's copy is dropped."""

    def report(self, err: Bad, path: Path) -> None:
        self.bag.error(err.code, err.message, err.help, err.span)
        self.bad.add(path)


Handler = Callable[[Ctx, Stmt, dict, Path], None]


@dataclass(frozen=True)
class StmtDef:
    handler: Handler
    example: str
    block: str | None = None
    """Name of the table for the statement's `{ }` block (None: takes no block)."""
    block_required: bool = False


# ---- Reading one value ----------------------------------------------------------------------


def _atom(arg: Arg, what: str) -> str:
    if arg.kind == "string":
        raise Bad(
            "R106",
            f"Expected {what}, found the string {arg.text}.",
            f"write it without quotes: {arg.value}",
            arg.span,
        )
    if arg.kind == "list":
        raise Bad("R106", f"Expected {what}, found a list.", "write a single value", arg.span)
    return str(arg.value)


def article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def read_string(arg: Arg, stmt: str = "") -> str:
    if arg.kind != "string":
        raise Bad(
            "R106",
            f"Expected a quoted string, found `{arg.text}`.",
            f'put the value in double quotes: {stmt} "{arg.text}"'.replace("  ", " ").strip(),
            arg.span,
        )
    return str(arg.value)


def join_spans(args: list[Arg]) -> Span:
    first, last = args[0].span, args[-1].span
    return Span(first.line, first.column, last.end_line, last.end_column)


def unit_reader(reader: Callable[[str], object], what: str) -> Callable[[Arg], object]:
    """A reader of one atom through a `spec.units` parser; UnitError becomes R108."""

    def read(arg: Arg) -> object:
        text = _atom(arg, what)
        try:
            return reader(text)
        except UnitError as err:
            raise Bad("R108", err.message, err.help, arg.span) from None

    return read


read_int = unit_reader(units.parse_int, "a whole number")
read_float = unit_reader(units.parse_float, "a number")
read_size = unit_reader(units.parse_size, "a size such as 12GB")
read_ratio = unit_reader(units.parse_ratio, "a ratio such as 1:1")
read_fraction = unit_reader(units.parse_fraction_percent, "a percent such as 5%")
read_range = unit_reader(units.parse_range, "a range such as 256..2048")


def read_resolution(arg: Arg) -> dict:
    width, height = unit_reader(units.parse_resolution, "a resolution such as 1024x768")(arg)
    return {"width": width, "height": height}


def read_choice(arg: Arg, choices: tuple[str, ...], what: str) -> str:
    word = _atom(arg, article(what))
    if word in choices:
        return word
    guess = closest(word, choices)
    raise Bad(
        "R201",
        f"Unknown {what} `{word}`.{hint(guess)}",
        f"choose one of: {', '.join(choices)}",
        arg.span,
    )


def read_switch(arg: Arg) -> bool:
    return read_choice(arg, ("on", "off"), "switch value") == "on"


def read_auto_switch(arg: Arg) -> bool | str:
    """`on`, `off` or `auto` (lorafile chooses; see compiler/vram.py `resolve_auto`)."""
    word = read_choice(arg, ("on", "off", "auto"), "switch value")
    return "auto" if word == "auto" else word == "on"


def read_raw(arg: Arg, allow_list: bool = True) -> m.PassValue:
    """A pass-through value: "string", number, true/false, or a [list] of those."""
    if arg.kind == "string":
        return str(arg.value)
    if arg.kind == "list":
        if not allow_list:
            raise Bad("R106", "A list is not allowed here.", "write a single value", arg.span)
        return [read_raw(item, allow_list=False) for item in arg.value]  # type: ignore[union-attr]
    word = str(arg.value)
    if word in ("true", "false"):
        return word == "true"
    if units.is_number(word):
        return unit_reader(units.parse_number, "a number")(arg)  # type: ignore[return-value]
    raise Bad(
        "R106",
        f"`{word}` is not a value: text must be quoted.",
        f'write "{word}", a number, true or false',
        arg.span,
    )


# ---- Statement shapes -----------------------------------------------------------------------


def expect_args(stmt: Stmt, low: int, high: int, example: str) -> None:
    count = len(stmt.args)
    if low <= count <= high:
        return
    if count < low:
        message = f"`{stmt.name}` needs a value."
        span = stmt.span
    else:
        message = f"`{stmt.name}` takes {_count(high)}, but {count} are given."
        span = Span(
            stmt.args[high].span.line,
            stmt.args[high].span.column,
            stmt.span.end_line,
            stmt.span.end_column,
        )
    raise Bad("R106", message, f"write it as `{example}`", span)


def _count(n: int) -> str:
    return {0: "no values", 1: "one value"}.get(n, f"{n} values")


def set_field(ctx: Ctx, out: dict, path: Path, name: str, value: object, stmt: Stmt) -> None:
    """Store one field; a field set twice is reported at the second statement."""
    if name in out:
        first = ctx.smap.get((*path, name))
        where = f" (first at line {first.line})" if first else ""
        raise Bad(
            "R109",
            f"`{stmt.name}` is given twice in this {'block' if path else 'recipe'}{where}.",
            "keep one of them",
            stmt.head_span,
        )
    out[name] = value
    ctx.smap[(*path, name)] = stmt.span


def scalar(name: str, reader: Callable[[Arg], object], example: str) -> StmtDef:
    """A statement with exactly one value and no block: `rank 16`."""

    def handle(ctx: Ctx, stmt: Stmt, out: dict, path: Path) -> None:
        expect_args(stmt, 1, 1, example)
        set_field(ctx, out, path, name, reader(stmt.args[0]), stmt)

    return StmtDef(handle, example)


def string(name: str, example: str) -> StmtDef:
    return scalar(name, lambda arg: read_string(arg, example.split()[0]), example)


def choice(name: str, choices: tuple[str, ...], what: str, example: str) -> StmtDef:
    return scalar(name, lambda arg: read_choice(arg, choices, what), example)


def switch(name: str, example: str) -> StmtDef:
    return scalar(name, read_switch, example)


def auto_switch(name: str, example: str) -> StmtDef:
    return scalar(name, read_auto_switch, example)


# ---- Reading blocks -------------------------------------------------------------------------


def read_block(ctx: Ctx, stmts: list[Stmt], table: str, out: dict, path: Path) -> None:
    """Run each statement's handler; report unknown statements and keep going."""
    defs = TABLES[table]
    for stmt in stmts:
        sdef = defs.get(stmt.name) if not stmt.quoted else None
        try:
            if sdef is None:
                raise unknown_statement(ctx, stmt, table)
            check_block(stmt, sdef)
            check_no_equals(stmt)
            sdef.handler(ctx, stmt, out, path)
        except Bad as err:
            field = FIELD_OF.get(stmt.name, stmt.name) if table == "recipe" else stmt.name
            ctx.report(_one_per_line(err, stmt, defs), (*path, field))


def _one_per_line(err: Bad, stmt: Stmt, defs: dict[str, StmtDef]) -> Bad:
    """`{ rank 8 alpha 4 }`: say that `alpha` starts a statement, not "too many values"."""
    if err.code != "R106":
        return err
    for arg in stmt.args:
        if arg.kind == "atom" and arg.text in defs and arg.text != stmt.name:
            return Bad(
                "R106",
                f"`{arg.text}` starts a new statement, but it is on the line of `{stmt.name}`.",
                "put each statement on its own line",
                arg.span,
            )
    return err


def check_no_equals(stmt: Stmt) -> None:
    """`steps = 1000` (TOML habit) gets its own message instead of "too many values"."""
    for arg in stmt.args:
        if arg.kind == "atom" and arg.text in ("=", ":"):
            rest = " ".join(a.text for a in stmt.args if a is not arg)
            raise Bad(
                "R106",
                f"Recipes do not use `{arg.text}` between a name and its value.",
                f"write `{stmt.name} {rest}`",
                arg.span,
            )


def check_block(stmt: Stmt, sdef: StmtDef) -> None:
    if stmt.block is not None and sdef.block is None:
        raise Bad(
            "R107",
            f"`{stmt.name}` takes no `{{ }}` block.",
            f"write it on one line: `{sdef.example}`",
            stmt.head_span,
        )
    if stmt.block is None and sdef.block_required:
        raise Bad(
            "R107",
            f"`{stmt.name}` needs a `{{ }}` block.",
            f"write it as `{sdef.example}`",
            stmt.head_span,
        )


def nested(ctx: Ctx, stmt: Stmt, sdef_table: str, out: dict, path: Path) -> None:
    """Read `stmt`'s block (if any) into `out`."""
    if stmt.block is not None:
        read_block(ctx, stmt.block, sdef_table, out, path)


# A misspelt top-level statement stands for this field; "missing" is not reported again.
FIELD_OF = {"recipe": "name", "dataset": "datasets"}


def unknown_statement(ctx: Ctx, stmt: Stmt, table: str) -> Bad:
    name = stmt.name
    where = "at the top level" if table == "recipe" else f"in the `{table}` block"
    if stmt.quoted:
        return Bad(
            "R105",
            f'Statement names are not quoted: "{name}" {where}.',
            "write the name without quotes (only pass-through keys may be quoted)",
            stmt.head_span,
        )
    homes = [t for t, defs in TABLES.items() if name in defs and t not in RAW_TABLES]
    if homes:
        places = ["the top level" if t == "recipe" else f"the `{t} {{ }}` block" for t in homes]
        home = " or ".join(places)
        return Bad(
            "R105",
            f"`{name}` does not belong {where}.",
            f"move it to {home}",
            stmt.head_span,
        )
    guess = closest(name, TABLES[table])
    if guess and table == "recipe":
        ctx.bad.add((FIELD_OF.get(guess, guess),))
    allowed = ", ".join(TABLES[table])
    return Bad(
        "R105",
        f"Unknown statement `{name}` {where}.{hint(guess)}",
        f"use one of: {allowed}",
        stmt.head_span,
    )


TABLES: dict[str, dict[str, StmtDef]] = {}
RAW_TABLES = ("optimizer", "passthrough")
