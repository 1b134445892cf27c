"""Units of the recipe language: reading and writing numbers, sizes, resolutions, ratios, percents.

Each `parse_*` function takes the text of one value as written in a recipe and returns the
spec's value, or raises `UnitError` with a message and a help line. Each `format_*` function is
its inverse: `parse_x(format_x(v)) == v` exactly, which the formatter's round trip relies on.
Decimal arithmetic keeps that exact where a unit scales the number (`5%` is 0.05, `12GB` is
12 * 10**9 bytes).

Sizes follow the SI/IEC rule: `GB` is 10**9 bytes and `GiB` is 2**30. A card sold as "12 GB"
has 12 GiB; `12GB` is about 7% less, so a VRAM budget written in `GB` errs on the safe side.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_SIZE = re.compile(r"(?P<num>\d+(\.\d+)?)\s*(?P<unit>[A-Za-z]+)")
_RESOLUTION = re.compile(r"(\d+)[xX](\d+)")
_RATIO = re.compile(r"(\d+(\.\d+)?):(\d+(\.\d+)?)")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")

SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
# Tried in this order when writing a size: the first unit that divides it exactly wins.
_SIZE_WRITE_ORDER = ("TiB", "GiB", "TB", "GB", "MiB", "MB", "KiB", "KB", "B")


class UnitError(ValueError):
    """A value that does not read as the unit its statement needs."""

    def __init__(self, message: str, help: str = ""):
        super().__init__(message)
        self.message = message
        self.help = help


def is_number(text: str) -> bool:
    """True when `text` is a plain number (`16`, `-1`, `1e-4`, `0.5`)."""
    return bool(_FLOAT.fullmatch(text))


def _whole(text: str) -> int:
    """int(text), or a UnitError past Python's 4300-digit limit on reading an int (a
    ValueError that would otherwise escape as a traceback, issue 12)."""
    try:
        return int(text)
    except ValueError:
        raise UnitError(
            f"`{text[:16]}...` has {len(text)} digits, far too many.", "write a smaller number"
        ) from None


def parse_int(text: str) -> int:
    """A whole number such as `3000` or `-1`."""
    if _INT.fullmatch(text):
        return _whole(text)
    if _FLOAT.fullmatch(text):
        raise UnitError(f"`{text}` is not a whole number.", "write a whole number such as 100")
    raise UnitError(f"`{text}` is not a number.", "write a whole number such as 100")


def parse_float(text: str) -> float:
    """A decimal number such as `1e-4`, `0.0357` or `16`."""
    if not _FLOAT.fullmatch(text):
        raise UnitError(f"`{text}` is not a number.", "write a number such as 1e-4 or 0.5")
    value = float(text)
    if not math.isfinite(value):
        raise UnitError(f"`{text}` is too large.", "write a number below 1e308")
    return value


def parse_number(text: str) -> int | float:
    """A whole number stays an `int`; anything with a point or an exponent is a `float`."""
    return parse_int(text) if _INT.fullmatch(text) else parse_float(text)


def format_number(value: float | int, keep_float: bool = False) -> str:
    """The shortest text that reads back as exactly `value`; small numbers as `1e-4`.

    With `keep_float`, a whole float keeps its point (`1.0`) so it reads back as a float; the
    recipe's own fields do not need that because the spec converts `16` to `16.0` itself.
    """
    if isinstance(value, bool):
        raise TypeError("format_number does not take booleans")
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value)}.0" if keep_float else str(int(value))
    if value != 0 and abs(value) < 1e-3:
        return _scientific(Decimal(repr(value)))
    text = repr(value)
    if "e" in text:
        return _scientific(Decimal(text))
    return text


def _scientific(number: Decimal) -> str:
    mantissa, exponent = f"{number.normalize():e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _decimal(text: str) -> Decimal:
    return Decimal(text)


def format_decimal(number: Decimal) -> str:
    """A Decimal without exponent or trailing zeros: 5.000 -> `5`, 0.50 -> `0.5`."""
    return format(number.normalize(), "f")


def parse_size(text: str) -> int:
    """`12GB`, `16GiB` or `16 GiB` to bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        if is_number(text):
            raise UnitError(
                f"`{text}` has no unit; a size needs one.",
                f"write `{text}GB` (10^9 bytes) or `{text}GiB` (2^30 bytes)",
            )
        raise UnitError(f"`{text}` is not a size.", "write a size such as 12GB or 16GiB")
    unit = _size_unit(match["unit"])
    number = Decimal(match["num"]) * SIZE_UNITS[unit]
    if number != number.to_integral_value():
        raise UnitError(f"`{text}` is not a whole number of bytes.", "write it in a smaller unit")
    return int(number)


def _size_unit(written: str) -> str:
    # Case does not matter (`gb`, `GiB`, `gib`); the i does (GiB is not GB).
    for unit in SIZE_UNITS:
        if unit.lower() == written.lower():
            return unit
    units = ", ".join(SIZE_UNITS)
    raise UnitError(f"`{written}` is not a size unit.", f"use one of: {units}")


def format_size(nbytes: int) -> str:
    """Bytes in the largest unit that divides them exactly: 12884901888 -> `12GiB`."""
    for unit in _SIZE_WRITE_ORDER:
        factor = SIZE_UNITS[unit]
        if nbytes % factor == 0 and nbytes // factor >= 1:
            return f"{nbytes // factor}{unit}"
    return f"{nbytes}B"


def parse_resolution(text: str) -> tuple[int, int]:
    """`1024` (square) or `1024x768` (width x height) in pixels."""
    if _INT.fullmatch(text) and not text.startswith(("+", "-")):
        return _whole(text), _whole(text)
    match = _RESOLUTION.fullmatch(text)
    if not match:
        raise UnitError(
            f"`{text}` is not a resolution.", "write the size in pixels: 1024 or 1024x768"
        )
    return _whole(match[1]), _whole(match[2])


def format_resolution(width: int, height: int, square_short: bool = True) -> str:
    """`1024` for a square when `square_short`, else `WIDTHxHEIGHT`."""
    if square_short and width == height:
        return str(width)
    return f"{width}x{height}"


def parse_ratio(text: str) -> float:
    """`1:1` or `2:1` (regularization images per subject image) to a number."""
    match = _RATIO.fullmatch(text)
    if not match:
        if is_number(text):
            raise UnitError(f"`{text}` has no ratio form.", f"write it as a ratio: `{text}:1`")
        raise UnitError(f"`{text}` is not a ratio.", "write a ratio such as 1:1 or 2:1")
    denominator = Decimal(match[3])
    if denominator == 0:
        raise UnitError(f"`{text}` divides by zero.", "write a ratio such as 1:1 or 2:1")
    return float(Decimal(match[1]) / denominator)


def format_ratio(value: float) -> str:
    """`1:1`, `2:1`, `0.5:1`: the value over one."""
    return f"{format_decimal(Decimal(repr(value)))}:1"


def parse_percent(text: str) -> float:
    """`5%` to the number 5.0 (percent units kept)."""
    if not text.endswith("%"):
        raise UnitError(f"`{text}` is not a percent.", f"write a percent such as `{text}%`")
    return float(_percent_decimal(text))


def _percent_decimal(text: str) -> Decimal:
    body = text[:-1]
    if not _FLOAT.fullmatch(body):
        raise UnitError(f"`{text}` is not a percent.", "write a percent such as 5%")
    try:
        return _decimal(body)
    except InvalidOperation as err:  # pragma: no cover - the regex admits only decimals
        raise UnitError(f"`{text}` is not a percent.", "write a percent such as 5%") from err


def parse_fraction_percent(text: str) -> float:
    """`5%` to the fraction 0.05, exactly the inverse of `format_fraction_percent`."""
    if not text.endswith("%"):
        if is_number(text):
            raise UnitError(
                f"`{text}` has no unit; a probability is written as a percent.",
                f"write `{format_decimal(_decimal(text) * 100)}%` for {text}",
            )
        raise UnitError(f"`{text}` is not a percent.", "write a percent such as 5%")
    return float(_percent_decimal(text) / 100)


def format_fraction_percent(value: float) -> str:
    """0.05 -> `5%`."""
    return f"{format_decimal(Decimal(repr(value)) * 100)}%"


def format_percent(value: float) -> str:
    """5.0 -> `5%`."""
    return f"{format_decimal(Decimal(repr(value)))}%"


def parse_range(text: str) -> tuple[int, int]:
    """`256..2048` to (256, 2048)."""
    match = _RANGE.fullmatch(text)
    if not match:
        raise UnitError(f"`{text}` is not a range.", "write a range of pixels such as 256..2048")
    return _whole(match[1]), _whole(match[2])


INTERVAL_UNITS = {"steps": "steps", "step": "steps", "epochs": "epochs", "epoch": "epochs"}


def parse_interval_unit(text: str) -> str:
    """`steps` or `epochs` (the singular is accepted too)."""
    if text in INTERVAL_UNITS:
        return INTERVAL_UNITS[text]
    raise UnitError(f"`{text}` is not a unit of training time.", "write `steps` or `epochs`")
