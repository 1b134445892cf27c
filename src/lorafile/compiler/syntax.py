"""The recipe's concrete syntax: text to a list of statements with source positions.

`grammars/recipe.lark` fixes the shape (statements, values, blocks); this module runs it and
turns lark's parse tree into `Stmt`/`Arg` records that carry a `Span` for every piece, so that
every later error (unknown statement, bad unit, a pydantic range error) points at the exact
line and column. Syntax errors become R1xx diagnostics; lark's exceptions never escape.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

from lorafile.compiler.diagnostics import DiagnosticBag, Span


@dataclass
class Arg:
    """One value after a statement name: a quoted string, a bare atom, or a `[list]`."""

    kind: str
    """`string`, `atom` or `list`."""
    value: str | list[Arg]
    span: Span
    text: str = ""
    """The source text (atoms: as written; strings: with quotes)."""


@dataclass
class Stmt:
    """`name value* { block }` with the positions of its parts."""

    name: str
    head_span: Span
    span: Span
    """From the name to the last value (the block not included)."""
    args: list[Arg] = field(default_factory=list)
    block: list[Stmt] | None = None
    quoted: bool = False
    """The name was written as a "quoted string" (pass-through keys only)."""
    block_end: Span | None = None
    """Where the block's closing `}` is (comments before it stay inside the block)."""


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    """The LALR parser for recipe.lark, built once per process.

    LALR with the contextual lexer: linear time, and a bare word lexes as a statement NAME at
    the start of a line and as a value ATOM after it, which is what makes the generic grammar
    unambiguous. propagate_positions gives every tree node its line and column.
    """
    grammar = resources.files("lorafile.grammars").joinpath("recipe.lark").read_text("utf-8")
    # cache=True: lark keeps the LALR tables in a temp file keyed by the grammar hash (about
    # 5x faster start-up for `lorafile check`); it falls back to building them if it cannot.
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True, cache=True)


MAX_SYNTAX_ERRORS = 10
# Recipes nest three levels deep at most; far deeper input is rejected before parsing, since
# turning it into statements recurses once per level.
MAX_NESTING = 32


def parse_statements(text: str, bag: DiagnosticBag) -> list[Stmt] | None:
    """Parse `text` into top-level statements, or report its syntax errors and return None.

    After a syntax error the rest of that line is blanked out (a missing `]` is inserted
    instead) and the text parsed again, so independent syntax errors on later lines are
    reported in the same run: at most one per line, at most MAX_SYNTAX_ERRORS.
    """
    if _too_deep(text, bag):
        return None
    found, open_braces = 0, 0
    lines_done: set[int] = set()
    seen: set[tuple] = set()
    while True:
        try:
            tree = _parser().parse(text)
        except UnexpectedInput_ as err:
            token = getattr(err, "token", None)
            where = (err.line, err.column, getattr(token, "type", None))
            if where in seen:  # a repair that changed nothing: stop rather than loop
                return None
            seen.add(where)
            partner = token is not None and token.type == "RBRACE" and open_braces > 0
            if partner:  # the `}` of a `{` already reported and blanked: not a new error
                open_braces -= 1
            elif err.line not in lines_done:
                _report_syntax_error(err, text, bag)
                found += 1
            lines_done.add(err.line)
            repaired = _repair(text, err)
            if repaired is None or found >= MAX_SYNTAX_ERRORS:
                return None
            if len(repaired) == len(text):
                open_braces += _removed_braces(text, repaired)
            text = repaired
            continue
        except LarkError as err:  # pragma: no cover - lark's other errors are grammar bugs
            bag.error("R102", f"The recipe could not be parsed: {err}.", "check the syntax")
            return None
        if found:
            return None
        return [_statement(child, bag) for child in tree.children if isinstance(child, Tree)]


def _too_deep(text: str, bag: DiagnosticBag) -> bool:
    opened = _open_brackets(text, "{[}]", limit=MAX_NESTING + 1)
    if len(opened) <= MAX_NESTING:
        return False
    bag.error(
        "R102",
        f"Blocks and lists are nested more than {MAX_NESTING} deep here.",
        "a recipe nests at most three levels, e.g. `train { optimizer x { key value } }`",
        opened[-1],
    )
    return True


def _removed_braces(before: str, after: str) -> int:
    """How many more `{` than `}` a repair blanked out (strings are not told apart: rare)."""
    gone = [b for b, a in zip(before, after, strict=False) if b != a]
    return max(gone.count("{") - gone.count("}"), 0)


def _repair(text: str, err: Exception) -> str | None:
    """`text` with the error's line made harmless, or None when that cannot make progress."""
    token = getattr(err, "token", None)
    if token is not None and token.type == "$END":
        return None
    pos = err.pos_in_stream if token is None else token.start_pos
    if pos is None:
        return None
    line_start = text.rfind("\n", 0, pos) + 1
    if isinstance(err, UnexpectedToken) and "RSQB" in err.expected and token.type == "_NL":
        comment = comment_start(text[line_start:pos])  # close the list before a comment
        at = pos if comment is None else line_start + comment
        return text[:at] + "]" + text[at:]
    line_end = text.find("\n", pos)
    line_end = len(text) if line_end < 0 else line_end
    cut = pos if text[pos:line_end].strip() else line_start
    if not text[cut:line_end].strip():
        return None
    return text[:cut] + " " * (line_end - cut) + text[line_end:]


def comment_start(line: str) -> int | None:
    """The index of the `#` that starts a comment in `line`, skipping `#` inside strings."""
    in_string = escaped = False
    for i, char in enumerate(line):
        if in_string and escaped:
            escaped = False
        elif in_string:
            escaped, in_string = char == "\\", char != '"'
        elif char == '"':
            in_string = True
        elif char == "#":
            return i
    return None


UnexpectedInput_ = (UnexpectedCharacters, UnexpectedToken, UnexpectedEOF)


def _span(item: Token | Tree) -> Span:
    meta = item if isinstance(item, Token) else item.meta
    line = getattr(meta, "line", None) or 1
    column = getattr(meta, "column", None) or 1
    return Span(line, column, getattr(meta, "end_line", None), getattr(meta, "end_column", None))


def _join(first: Span, last: Span) -> Span:
    return Span(first.line, first.column, last.end_line, last.end_column)


def _statement(tree: Tree, bag: DiagnosticBag) -> Stmt:
    head, *rest = tree.children
    block, block_end = None, None
    if rest and isinstance(rest[-1], Tree) and rest[-1].data == "block":
        block_tree = rest.pop()
        block = [_statement(c, bag) for c in block_tree.children if isinstance(c, Tree)]
        end = _span(block_tree)
        block_end = Span(end.end_line or end.line, max((end.end_column or 2) - 1, 1))
    args = [_arg(item, bag) for item in rest]
    head_span = _span(head)
    quoted = head.type == "STRING"
    name = _decode_string(head, bag) if quoted else str(head)
    span = _join(head_span, args[-1].span) if args else head_span
    return Stmt(name, head_span, span, args, block, quoted, block_end)


def _arg(item: Token | Tree, bag: DiagnosticBag) -> Arg:
    if isinstance(item, Tree):
        values = [_arg(child, bag) for child in item.children if child is not None]
        return Arg("list", values, _span(item), "[...]")
    if item.type == "STRING":
        return Arg("string", _decode_string(item, bag), _span(item), str(item))
    return Arg("atom", str(item), _span(item), str(item))


def _decode_string(token: Token, bag: DiagnosticBag) -> str:
    """JSON string rules: `\\"`, `\\\\`, `\\n`, `\\t`, `\\uXXXX`."""
    try:
        value = json.loads(str(token), strict=False)
        value.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        bag.error(
            "R104",
            f"The string {token} has an invalid escape sequence.",
            'inside quotes write \\\\ for a backslash (or use forward slashes in paths) and \\" '
            "for a quote",
            _span(token),
        )
        return str(token)[1:-1]
    return value


def _report_syntax_error(err: Exception, text: str, bag: DiagnosticBag) -> None:
    if isinstance(err, UnexpectedCharacters):
        _unexpected_character(err, text, bag)
    elif isinstance(err, UnexpectedToken) and err.token.type != "$END":
        _unexpected_token(err, bag)
    else:
        _unexpected_end(text, bag)


def _unexpected_character(err: UnexpectedCharacters, text: str, bag: DiagnosticBag) -> None:
    span = Span(err.line, err.column, err.line, err.column + 1)
    char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
    if char == '"':
        bag.error(
            "R104",
            "This string is not closed.",
            'end it with a " on the same line (strings cannot span lines)',
            span,
        )
        return
    bag.error(
        "R101",
        f"Unexpected character {char!r} here.",
        "statements look like `name value ...` or `name value { ... }`, one per line",
        span,
    )


def _unexpected_token(err: UnexpectedToken, bag: DiagnosticBag) -> None:
    token = err.token
    span = _span(token)
    shown = f"`{str(token).strip()}`" if str(token).strip() else "end of line"
    expected = set(err.expected)
    if token.type == "RBRACE":
        message, help = f"Unexpected {shown}: no block is open here.", "remove this `}`"
    elif token.type == "COMMA":
        message = "Unexpected `,`: commas only separate the values of a `[list]`."
        help = "separate values with spaces, or put the text in quotes"
    elif token.type == "LBRACE":
        message = "Unexpected `{`: a block must follow a statement name on the same line."
        help = "write the block's name and `{` on one line, e.g. `train {`"
    elif "NAME" in expected and token.type in ("ATOM", "LSQB", "COMMA"):
        message = f"Unexpected {shown}: a statement starts with a name."
        help = "start each line with a statement name such as `rank` or `train`"
    elif "RSQB" in expected:
        message = "This list is not closed."
        help = "end the list with `]` on the same line, with commas between the values"
    elif "_NL" in expected or "RBRACE" in expected:
        message = f"Unexpected {shown} after the end of a statement."
        help = "put each statement on its own line"
    else:
        message = f"Unexpected {shown} here."
        help = "check the brackets and quotes on this line"
    bag.error("R102", message, help, span)


def _unexpected_end(text: str, bag: DiagnosticBag) -> None:
    opened = _unclosed_brace(text)
    lines = text.split("\n")
    end = Span(len(lines), len(lines[-1]) + 1)
    if opened is not None:
        bag.error(
            "R103",
            f"The block opened at line {opened.line} is not closed.",
            "add a `}` on its own line at the end of the block",
            opened,
        )
    else:
        bag.error(
            "R103",
            "The recipe ends in the middle of a statement.",
            "close the open `[` list",
            end,
        )


def _unclosed_brace(text: str) -> Span | None:
    """The `{` left open at the end of the text."""
    stack = _open_brackets(text, "{}")
    return stack[-1] if stack else None


def _open_brackets(text: str, pairs: str, limit: int | None = None) -> list[Span]:
    """Positions of the brackets (`pairs`: opening then closing chars) still open at the end,
    skipping strings and comments; with `limit`, stop as soon as that many are open."""
    opening, closing = pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :]
    stack: list[Span] = []
    line, column, in_string, escaped, in_comment = 1, 0, False, False, False
    for char in text:
        column += 1
        if char == "\n":
            line, column, in_string, in_comment = line + 1, 0, False, False
        elif in_comment:
            continue
        elif in_string and escaped:
            escaped = False
        elif in_string:
            escaped, in_string = char == "\\", char != '"'
        elif char == '"':
            in_string, escaped = True, False
        elif char == "#":
            in_comment = True
        elif char in opening:
            stack.append(Span(line, column, line, column + 1))
            if limit is not None and len(stack) >= limit:
                return stack
        elif char in closing and stack:
            stack.pop()
    return stack
