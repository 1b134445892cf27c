"""Keeping a recipe's comments through `lorafile fmt`.

The formatter prints a `Recipe`, which has no comments, so `fmt` would otherwise delete them.
Instead each comment is attached to a statement of the original text, keyed by where that
statement sits (`(("train", 0), ("lr", 0))`: the first `lr` in the first `train`), and put
back beside the statement with the same key in the formatted text:

- a comment on its own line belongs to the next statement (or, before a `}`, to the end of
  that block);
- a comment after a statement on the same line stays at the end of that line;
- a comment whose statement the formatter dropped (it restated a default) moves to the end of
  the enclosing block, or of the file, so no comment is ever lost.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.compiler.syntax import Stmt, comment_start, parse_statements

Key = tuple[tuple[str, int], ...]
INDENT = "    "


@dataclass
class Comments:
    leading: dict[Key, list[str]] = field(default_factory=dict)
    trailing: dict[Key, str] = field(default_factory=dict)
    block_end: dict[Key, list[str]] = field(default_factory=dict)
    """Comments before a block's `}`; the key `()` is the end of the file."""

    def __bool__(self) -> bool:
        return bool(self.leading or self.trailing or self.block_end)


def find_comments(text: str) -> list[tuple[int, str, bool]]:
    """(line, comment text from `#`, whole_line) for each comment, skipping `#` in strings."""
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        at = comment_start(line)
        if at is not None:
            found.append((number, line[at:].rstrip(), not line[:at].strip()))
    return found


def _anchors(stmts: list[Stmt], parent: Key = ()) -> list[tuple[int, str, Key]]:
    """(line, "head" | "end", key) for every statement head and block end, in any order."""
    seen: Counter = Counter()
    out = []
    for stmt in stmts:
        key = (*parent, (stmt.name, seen[stmt.name]))
        seen[stmt.name] += 1
        out.append((stmt.head_span.line, "head", key))
        if stmt.block is not None:
            out += _anchors(stmt.block, key)
            if stmt.block_end is not None:
                out.append((stmt.block_end.line, "end", key))
    return out


def collect(text: str, stmts: list[Stmt]) -> Comments:
    """Attach each comment of `text` (parsed as `stmts`) to a statement key."""
    comments = Comments()
    anchors = sorted(_anchors(stmts), key=lambda a: (a[0], a[1] != "head"))
    lines = [anchor[0] for anchor in anchors]
    heads = {}
    for line, kind, key in anchors:
        if kind == "head":
            heads.setdefault(line, key)
    for line, body, whole in find_comments(text):
        if not whole and line in heads:
            comments.trailing[heads[line]] = body
            continue
        # The next anchor at or after this line (a line with a comment but no statement holds
        # at most block ends, e.g. `}  # end of train`).
        at = bisect.bisect_left(lines, line)
        if at == len(anchors):
            comments.block_end.setdefault((), []).append(body)
        elif anchors[at][1] == "head":
            comments.leading.setdefault(anchors[at][2], []).append(body)
        else:
            comments.block_end.setdefault(anchors[at][2], []).append(body)
    return comments


def reattach(formatted: str, comments: Comments) -> str:
    """Put `comments` back into `formatted` (canonical text) beside the same statements."""
    if not comments:
        return formatted
    stmts = parse_statements(formatted, DiagnosticBag()) or []
    lines = formatted.rstrip("\n").split("\n")
    before: dict[int, list[str]] = {}
    after_line: dict[int, str] = {}
    present = _place(stmts, comments, before, after_line)
    orphans = _orphans(comments, present)
    for (kind, key), bodies in orphans.items():
        if key == ():
            continue
        line, depth = present[kind][key]
        inside = kind == "end" and not _one_line_block(present, key)
        before.setdefault(line, []).extend(INDENT * (depth + inside) + b for b in bodies)
    out = []
    for number, line in enumerate(lines, start=1):
        out += before.get(number, [])
        out.append(line + (f"  {after_line[number]}" if number in after_line else ""))
    out += comments.block_end.get((), []) + orphans.get(("end", ()), [])
    return "\n".join(out) + "\n"


def _place(stmts: list[Stmt], comments: Comments, before: dict, after_line: dict) -> dict:
    """Schedule leading/trailing/block-end comments of statements present in the new text."""
    present: dict = {"head": {}, "end": {}}
    for line, kind, key in _anchors(stmts):
        depth = len(key) - 1
        if kind == "head":
            present["head"][key] = (line, depth)
            bodies = comments.leading.get(key, [])
            before.setdefault(line, []).extend(INDENT * depth + b for b in bodies)
            if key in comments.trailing:
                after_line[line] = comments.trailing[key]
        else:
            present["end"][key] = (line, depth)
            bodies = comments.block_end.get(key, [])
            inside = not _one_line_block(present, key)
            before.setdefault(line, []).extend(INDENT * (depth + inside) + b for b in bodies)
    return present


def _one_line_block(present: dict, key: Key) -> bool:
    """`passthrough kohya {}`: its end comments can only go above it."""
    return present["head"][key][0] == present["end"][key][0]


def _orphans(comments: Comments, present: dict) -> dict[tuple[str, Key], list[str]]:
    """Comments whose statement is gone, by where they go instead: the end of the nearest
    enclosing block still present, or above its statement if the block itself is gone."""
    orphans: dict[tuple[str, Key], list[str]] = {}

    def home(key: Key) -> tuple[str, Key]:
        key = key[:-1]
        while key:
            if key in present["end"]:
                return "end", key
            if key in present["head"]:
                return "head", key
            key = key[:-1]
        return "end", ()

    for key, bodies in comments.leading.items():
        if key not in present["head"]:
            orphans.setdefault(home(key), []).extend(bodies)
    for key, body in comments.trailing.items():
        if key not in present["head"]:
            orphans.setdefault(home(key), []).append(body)
    for key, bodies in comments.block_end.items():
        if key and key not in present["end"]:
            orphans.setdefault(home(key), []).extend(bodies)
    return orphans
