"""TOML in and out for the backends: write with tomli-w, read with tomllib, find key lines.

Trainers read TOML with different parsers (kohya sd-scripts uses the old `toml` 0.10.2
package), so the writer keeps to the plain subset every parser agrees on: tables, arrays of
tables, strings, numbers, booleans and flat arrays. Comments cannot be written by tomli-w, so a
header of `#` lines is prepended as text.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping

import tomli_w

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)\s*=""")

KeyPath = tuple[str | int, ...]


INT64 = range(-(2**63), 2**63)
"""TOML integers are 64-bit signed (toml.io: "Arbitrary 64-bit signed integers")."""


class IntOutOfRange(ValueError):
    """An integer TOML cannot hold; `key` is its dotted path in the document."""

    def __init__(self, key: str, value: int):
        super().__init__(f"{key} = {value} is outside TOML's 64-bit integer range")
        self.key, self.value = key, value


def check_ints(value: object, key: str = "") -> None:
    """Raise IntOutOfRange for the first integer in `value` that TOML cannot hold: tomli-w
    would write it, and sd-scripts' toml parser (and any TOML 1.0 reader) refuses the file."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            check_ints(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_ints(item, f"{key}[{i}]")
    elif isinstance(value, int) and not isinstance(value, bool) and value not in INT64:
        raise IntOutOfRange(key, value)


def dumps(doc: Mapping[str, object], header: Iterable[str] = ()) -> str:
    """Serialise `doc` as TOML with `header` lines as leading `#` comments.

    Raises IntOutOfRange for an integer TOML cannot hold.

    Layout is ours (tables as `[name]`, arrays of tables as `[[name]]` and `[[name.child]]`,
    flat arrays inline), value spelling is tomli-w's. tomli-w alone would write nested arrays
    of tables as inline tables, which people do not write and older parsers handle badly.
    """
    check_ints(doc)
    lines = [f"# {line}".rstrip() for line in header]
    if lines:
        lines.append("")
    lines.extend(_scalars(doc))
    for key, value in doc.items():
        if isinstance(value, Mapping):
            lines.extend(["", f"[{_key(key)}]", *_scalars(value)])
        elif _is_table_array(value):
            lines.extend(_table_array((key,), value, ""))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).lstrip("\n") + "\n"


def _scalars(table: Mapping[str, object]) -> list[str]:
    return [
        f"{_key(k)} = {_value(v)}"
        for k, v in table.items()
        if v is not None and not isinstance(v, Mapping) and not _is_table_array(v)
    ]


def _table_array(path: tuple[str, ...], items: list, indent: str) -> list[str]:
    lines: list[str] = []
    name = ".".join(_key(p) for p in path)
    for item in items:
        lines.extend(["", f"{indent}[[{name}]]"])
        lines.extend(indent + line for line in _scalars(item))
        for key, value in item.items():
            if _is_table_array(value):
                lines.extend(_table_array((*path, key), value, indent + "  "))
    return lines


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) else _value(key)


def _value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # tomli-w spells scalars (string escapes, float forms) the way every TOML parser reads them.
    return tomli_w.dumps({"v": value}).split(" = ", 1)[1].rstrip("\n")


def loads(text: str) -> dict:
    """Parse TOML text with the standard library (raises tomllib.TOMLDecodeError)."""
    return tomllib.loads(text)


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key's path to its 1-based line: `("section", "key")`, `("datasets", 0, "key")`.

    A line-level scan (not a full parser): enough to point a diagnostic at the line a user wrote,
    for the tables, arrays of tables and `key = value` lines that trainer configs use.
    """
    found: dict[KeyPath, int] = {}
    counters: dict[tuple, int] = {}
    table: KeyPath = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _table_path(header.group(1), header.group(2), table, counters)
            found.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            found.setdefault((*table, key.group(1).strip("\"'")), number)
    return found


def _table_path(bracket: str, name: str, current: KeyPath, counters: dict) -> KeyPath:
    parts = [p.strip().strip("\"'") for p in name.split(".")]
    path: list[str | int] = []
    # Each array-of-tables name segment resolves to its latest element, as TOML defines.
    for i, part in enumerate(parts):
        path.append(part)
        prefix = tuple(path)
        is_last = i == len(parts) - 1
        if is_last and bracket == "[[":
            counters[prefix] = counters.get(prefix, -1) + 1
            _reset_children(counters, prefix)
            path.append(counters[prefix])
        elif prefix in counters:
            path.append(counters[prefix])
    return tuple(path)


def _reset_children(counters: dict, prefix: tuple) -> None:
    for key in [k for k in counters if len(k) > len(prefix) and k[: len(prefix)] == prefix]:
        del counters[key]
