"""One error model for the parser, validator, linter, VRAM model, backends and importers.

Every problem lorafile reports is a `Diagnostic`: a stable code, a severity, a message that says
what is wrong, a help line that says what to do, and where (file, line, column, the source line).
Problems are *collected* in a `DiagnosticBag` and raised together as one `DiagnosticError`, so a
user sees every problem of a recipe at once.

Code families (documented one by one in docs/diagnostics.md):

    R1xx  syntax              R2xx  validation        L3xx  lint rules
    V4xx  VRAM budget         T5xx  target cannot express a setting
    I6xx  import of a trainer config    F7xx  model and LoRA files
    D8xx  dataset (`prep`, `caption`)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

MAX_REPORTED = 50


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Span:
    """A position in a source file; lines and columns count from 1."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    help: str = ""
    severity: Severity = Severity.ERROR
    file: str | None = None
    span: Span | None = None
    source_line: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "severity": str(self.severity),
            "message": self.message,
            "help": self.help,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }

    def __str__(self) -> str:
        return render(self)


def printable(text: str) -> str:
    """`text` safe to print to a terminal: each control or format character (ESC sequences,
    carriage returns, line breaks, bidi overrides, NUL) is shown as its escape, so a recipe's
    or config's strings quoted in a message cannot move the cursor or recolour the screen."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\t" else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def render(diag: Diagnostic) -> str:
    """Render like ruff/rustc: header, location, source line with a caret, help.

    Every part that can quote user text goes through `printable`."""
    lines = [f"{diag.severity}[{diag.code}]: {printable(diag.message)}"]
    where = printable(diag.file or "<input>")
    if diag.span:
        lines.append(f"  --> {where}:{diag.span.line}:{diag.span.column}")
        if diag.source_line is not None:
            gutter = str(diag.span.line)
            pad = " " * len(gutter)
            lines.append(f" {pad} |")
            lines.append(f" {gutter} | {printable(diag.source_line.rstrip())}")
            lines.append(f" {pad} | {' ' * (diag.span.column - 1)}{_underline(diag)}")
    elif diag.file:
        lines.append(f"  --> {where}")
    if diag.help:
        lines.append(f"  = help: {printable(diag.help)}")
    return "\n".join(lines)


def _underline(diag: Diagnostic) -> str:
    span = diag.span
    if span and span.end_line == span.line and span.end_column and span.end_column > span.column:
        return "^" * (span.end_column - span.column)
    return "^"


def render_all(diags: Iterable[Diagnostic], limit: int = MAX_REPORTED) -> str:
    """Render diagnostics in order, capped at `limit` with an "and N more" line."""
    diags = list(diags)
    shown = [render(d) for d in diags[:limit]]
    if len(diags) > limit:
        shown.append(f"... and {len(diags) - limit} more")
    return "\n\n".join(shown)


def summary_line(diags: Iterable[Diagnostic]) -> str:
    diags = list(diags)
    errors = sum(d.is_error for d in diags)
    warnings = sum(d.severity is Severity.WARNING for d in diags)
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


@dataclass
class DiagnosticBag:
    """Collects diagnostics for one input; knows its file name and source text for carets."""

    file: str | None = None
    source: str | None = None
    items: list[Diagnostic] = field(default_factory=list)
    _split: tuple[str, list[str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def add(
        self,
        code: str,
        message: str,
        help: str = "",
        *,
        span: Span | None = None,
        severity: Severity = Severity.ERROR,
    ) -> Diagnostic:
        diag = Diagnostic(
            code=code,
            message=message,
            help=help,
            severity=severity,
            file=self.file,
            span=span,
            source_line=self._source_line(span),
        )
        self.items.append(diag)
        return diag

    def error(
        self, code: str, message: str, help: str = "", span: Span | None = None
    ) -> Diagnostic:
        return self.add(code, message, help, span=span, severity=Severity.ERROR)

    def warning(
        self, code: str, message: str, help: str = "", span: Span | None = None
    ) -> Diagnostic:
        return self.add(code, message, help, span=span, severity=Severity.WARNING)

    def info(self, code: str, message: str, help: str = "", span: Span | None = None) -> Diagnostic:
        return self.add(code, message, help, span=span, severity=Severity.INFO)

    def extend(self, diags: Iterable[Diagnostic]) -> None:
        self.items.extend(diags)

    def merge(self, diags: Iterable[Diagnostic]) -> None:
        """Add the diagnostics not already here (a reader's error carries the bag's own items).

        A set lookup, not `d not in self.items`: that made an import that failed with many
        warnings quadratic (issue 12: 20k unknown keys and one error took 40 s).
        """
        present = set(self.items)
        for diag in diags:
            if diag not in present:
                present.add(diag)
                self.items.append(diag)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise DiagnosticError(self.items)

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def _source_line(self, span: Span | None) -> str | None:
        if span is None or self.source is None:
            return None
        lines = self._lines()
        if 1 <= span.line <= len(lines):
            return lines[span.line - 1]
        return None

    def _lines(self) -> list[str]:
        # Split once per source text: splitting on every diagnostic made a config with many
        # reported keys quadratic (issue 12: 8k unknown kohya keys took seconds).
        cached = self._split
        if cached is None or cached[0] is not self.source:
            # Parsers count lines by "\n" only; splitlines() also splits at \f, \x1c, \u2028 ...
            cached = (self.source, self.source.split("\n"))
            self._split = cached
        return cached[1]


class DiagnosticError(Exception):
    """The one exception type lorafile raises for bad input; carries every diagnostic found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__(render_all(self.diagnostics))

    def to_dicts(self) -> list[dict]:
        return [d.to_dict() for d in self.diagnostics]


def fail(code: str, message: str, help: str = "") -> DiagnosticError:
    """One error as an exception to raise: `raise fail("F701", "...", "do this")`."""
    return DiagnosticError([Diagnostic(code=code, message=message, help=help)])


def first_line(err: BaseException) -> str:
    """An exception's message up to its first line break, or its type's name when it has no
    message: what a diagnostic quotes of a library's error (they run to many lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def error_summary(err: BaseException) -> str:
    """`TypeName: first line of its message`, or the type's name alone when it has no message
    (so a bare `RuntimeError()` reads `RuntimeError`, not `RuntimeError: RuntimeError`)."""
    name = type(err).__name__
    return f"{name}: {first_line(err)}" if str(err).strip() else name


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean `x`?' for the closest choice, or '' when nothing is close."""
    return hint(closest(word, choices))


def closest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def hint(guess: str | None) -> str:
    """' Did you mean `guess`?', or '' without a guess: the one wording of every suggestion."""
    return f" Did you mean `{guess}`?" if guess else ""


class Suggester:
    """Capped "did you mean" lookups, for an input that may hold thousands of unknown names.

    The known names are listed once; the first `limit` lookups get a suggestion (the ones a
    person reads: `render_all` shows MAX_REPORTED diagnostics) and later ones get None, so a
    config with 100,000 unknown keys costs `limit` lookups, not 100,000 (issue 12: a kohya
    config with 110k unknown keys never finished).
    """

    def __init__(self, choices: Iterable[str] = (), limit: int = MAX_REPORTED):
        self.choices = list(dict.fromkeys(choices))
        self.limit = limit
        self.lookups = 0

    def __call__(self, word: str, choices: Iterable[str] | None = None) -> str | None:
        """The known name closest to `word` (among `choices` when given), or None."""
        if self.lookups >= self.limit:
            return None
        self.lookups += 1
        return closest(word, self.choices if choices is None else choices)

    def hint(self, word: str) -> str:
        """' Did you mean `x`?', or '' when nothing is close or the cap is reached."""
        return hint(self(word))
