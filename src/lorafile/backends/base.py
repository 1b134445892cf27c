"""The backend registry: one class per trainer, each with both a reader and a writer.

Modelled on sqlglot's dialects: a backend declares what it can express as data (capability
flags and mapping tables), writes a Recipe into the trainer's files, reads the trainer's files
back into a Recipe, and reports every setting it cannot express as a T5xx diagnostic (an error
unless the user allows lossy output). Readers and writers never talk to each other: migration is
`target.write(source.read(x))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, Severity, did_you_mean
from lorafile.spec import Recipe


@dataclass
class Compiled:
    """The files a backend writes, relative to the output folder, in writing order."""

    files: dict[str, str] = field(default_factory=dict)
    executable: set[str] = field(default_factory=set)
    """Files to mark executable (launch scripts)."""


class Backend:
    name: ClassVar[str]
    """Registry key, as typed on the command line (`--target kohya`)."""
    description: ClassVar[str] = ""

    def __init__(self, allow_lossy: bool = False):
        self.allow_lossy = allow_lossy

    def write(self, recipe: Recipe, bag: DiagnosticBag) -> Compiled:
        raise NotImplementedError

    def read(self, path: Path, bag: DiagnosticBag, **options) -> Recipe:
        raise NotImplementedError

    def project(self, recipe: Recipe) -> Recipe:
        """The recipe reduced to what this trainer can express (identity by default)."""
        return recipe

    def unsupported(self, bag: DiagnosticBag, code: str, message: str, help: str = "") -> None:
        """Report a setting this target cannot express: an error unless lossy output is allowed."""
        severity = Severity.WARNING if self.allow_lossy else Severity.ERROR
        if not help and not self.allow_lossy:
            help = "change the recipe, or pass --allow-lossy to compile without this setting"
        bag.add(code, message, help, severity=severity)


_REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


BUILTIN = ("kohya", "simpletuner", "native")


def _load_builtin_backends(only: str | None = None) -> None:
    # Imported here, not at module top, so `lorafile.backends.base` has no import cycle; and
    # only the one asked for when it is a built-in (each backend package costs tens of ms).
    import importlib

    for module in (only,) if only in BUILTIN else BUILTIN:
        try:
            importlib.import_module(f"lorafile.backends.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"lorafile.backends.{module}":
                raise


def names() -> list[str]:
    _load_builtin_backends()
    return sorted(_REGISTRY)


def get(name: str, allow_lossy: bool = False) -> Backend:
    _load_builtin_backends(name)
    if name not in _REGISTRY:
        bag = DiagnosticBag()
        bag.error(
            "R201",
            f"Unknown target `{name}`.{did_you_mean(name, _REGISTRY)}",
            f"choose one of: {', '.join(sorted(_REGISTRY))}",
        )
        raise DiagnosticError(bag.items)
    return _REGISTRY[name](allow_lossy=allow_lossy)
