"""An input file's text for the readers (recipes, kohya and SimpleTuner configs), or a diagnostic.

Every reader reports the same two failures the same way: a file that cannot be read (with the
reader's own code, e.g. I600 for kohya) and a file that is not UTF-8 (R110 everywhere), so a
user sees one message whichever command read the file.
"""

from __future__ import annotations

from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError


def read_input_text(
    path: Path,
    bag: DiagnosticBag,
    code: str,
    help: str,
    *,
    utf8_help: str,
    encoding: str = "utf-8-sig",
) -> str:
    """The file's text; `code` (with `help`) when it cannot be read, R110 when not UTF-8.

    `encoding` is `utf-8-sig` (a leading BOM is dropped) or `utf-8`, where the trainer keeps
    the BOM as part of the text (sd-scripts' `toml` would make it part of the first key).
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        bag.error(code, f"Cannot read `{path}`: {err.strerror or err}.", help)
        raise DiagnosticError(bag.items) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        message = f"`{path}` is not UTF-8 text (byte {err.start} is invalid)."
        bag.error("R110", message, utf8_help)
        raise DiagnosticError(bag.items) from None
