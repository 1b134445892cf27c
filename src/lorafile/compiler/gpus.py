"""Diagnostics about GPU names: the catalog itself (spec/gpus.py) knows nothing of diagnostics,
so that the spec layer stays below the compiler."""

from __future__ import annotations

from lorafile.compiler.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError
from lorafile.spec.gpus import Gpu, find, suggestions


def unknown_gpu(name: str, bag: DiagnosticBag | None = None, span=None) -> Diagnostic:
    """The V402 diagnostic for a GPU name the catalog does not know."""
    close = suggestions(name)
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    message = f"Unknown GPU `{name}`.{hint}"
    help_text = (
        "write a catalog name (see `docs/vram.md`, e.g. `RTX 4090`, `A100 80GB`, `M3 Max 64GB`) "
        "or give the memory directly with `vram 24GB` / `--vram 24GB`"
    )
    bag = bag if bag is not None else DiagnosticBag()
    return bag.error("V402", message, help_text, span=span)


def lookup(name: str) -> Gpu:
    """The catalog entry for `name`; raises DiagnosticError (V402, with suggestions) if unknown."""
    gpu = find(name)
    if gpu is None:
        raise DiagnosticError([unknown_gpu(name)])
    return gpu
