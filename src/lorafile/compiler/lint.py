"""`lorafile lint`: the VRAM report (V4xx) and the lint rules (L3xx) for one recipe.

`lint_recipe` estimates peak memory for the trainer the file targets (compiler/vram.py), judges
it against a budget (the `--gpu`/`--vram` flag, else the recipe's `hardware`, else none), ranks
the measures that would save memory (compiler/fit.py), and runs the rules
(compiler/lint_rules.py). `render_text` and `to_json` print the result. No torch anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorafile.compiler import fit, hub, vram
from lorafile.compiler.diagnostics import (
    Diagnostic,
    DiagnosticBag,
    DiagnosticError,
    render_all,
)
from lorafile.compiler.gpus import unknown_gpu
from lorafile.compiler.lint_rules import RULES, LintContext
from lorafile.spec import Recipe, gpus
from lorafile.spec.units import format_size

# Close to the limit: allocator fragmentation on bucketed shapes varies by this much.
MARGIN = vram.MARGIN


@dataclass
class Budget:
    bytes: int | None
    label: str = ""


@dataclass
class LintReport:
    recipe: Recipe
    estimate: vram.Estimate
    budget: Budget
    suggestions: list[fit.Suggestion]
    diagnostics: list[Diagnostic]
    fitted: fit.FitReport | None = None
    trainer: str = "native"
    models: dict[str, str] | None = None
    """Where the base model and VAE resolve to (hub ids: the cache, or how to download)."""

    @property
    def fits(self) -> bool | None:
        if self.budget.bytes is None:
            return None
        return self.estimate.total_bytes <= self.budget.bytes

    @property
    def exit_code(self) -> int:
        has_error = any(d.is_error for d in self.diagnostics)
        return 1 if has_error or self.fits is False else 0


def resolve_budget(
    recipe: Recipe,
    bag: DiagnosticBag,
    gpu: str | None = None,
    vram_bytes: int | None = None,
    smap=None,
) -> Budget:
    """The memory budget per GPU: flags first, then the recipe's `hardware`, else none."""
    if vram_bytes is not None:
        return Budget(vram_bytes, f"--vram {format_size(vram_bytes)}")
    if gpu is not None:
        return _from_gpu(gpu, bag, None)
    hw = recipe.hardware
    if hw.vram is not None:
        return Budget(hw.vram, f"hardware vram {format_size(hw.vram)}")
    if hw.gpu is not None:
        span = (
            smap.find(("hardware", "gpu")) if smap is not None and hasattr(smap, "find") else None
        )
        return _from_gpu(hw.gpu, bag, span)
    return Budget(None)


def _from_gpu(name: str, bag: DiagnosticBag, span) -> Budget:
    found = gpus.find(name)
    if found is None:
        unknown_gpu(name, bag, span)
        return Budget(None)
    unified = ", the GPU's share of unified memory" if found.unified else ""
    return Budget(
        found.budget_bytes, f"{found.name}, {vram.gib(found.budget_bytes):.0f} GiB{unified}"
    )


def lint_recipe(
    recipe: Recipe,
    *,
    trainer: str = "native",
    source: str = "recipe",
    smap=None,
    budget: Budget | None = None,
    gpus_count: int | None = None,
    bag: DiagnosticBag | None = None,
    base_dir: Path | None = None,
) -> LintReport:
    """Estimate, judge, suggest and run the lint rules for one recipe (`base_dir`: the
    recipe's folder, which relative model paths are relative to)."""
    bag = bag if bag is not None else DiagnosticBag()
    budget = budget if budget is not None else resolve_budget(recipe, bag, smap=smap)
    recipe, _ = vram.resolve_auto(recipe, budget.bytes, trainer)
    fitted = None
    if recipe.train.memory == "auto" and budget.bytes is not None:
        try:
            recipe, fitted = fit.fit_recipe(recipe, budget.bytes, trainer)
        except DiagnosticError as err:
            bag.extend(err.diagnostics)
    setup = vram.setup_for(recipe, trainer, gpus=gpus_count)
    est = vram.estimate(recipe, setup=setup)
    suggestions = fit.suggest(recipe, setup)
    _verdict(est, budget, suggestions, bag, smap)
    ctx = LintContext(
        recipe, bag, trainer=trainer, source=source, smap=smap, gpus=gpus_count, base_dir=base_dir
    )
    for rule in RULES:
        rule(ctx)
    models = {"base model": hub.describe_location(recipe.base.path, base_dir)}
    if recipe.base.vae:
        models["vae"] = hub.describe_location(recipe.base.vae, base_dir)
    return LintReport(recipe, est, budget, suggestions, list(bag.items), fitted, trainer, models)


def _verdict(est, budget: Budget, suggestions, bag: DiagnosticBag, smap) -> None:
    span = smap.find(("hardware",)) if smap is not None and hasattr(smap, "find") else None
    if budget.bytes is None:
        bag.info(
            "V404",
            "No memory budget: the VRAM report has no verdict.",
            'add `hardware { gpu "RTX 4090" }` or `vram 24GB` to the recipe, or pass --gpu / --vram',
        )
        return
    total, limit = est.total_bytes, budget.bytes
    if total > limit:
        best = f"; the largest saving: {suggestions[0].change}" if suggestions else ""
        bag.error(
            "V401",
            f"The estimated peak of {vram.gib(total):.2f} GiB ({est.peak_phase}) does not fit the "
            f"{vram.gib(limit):.2f} GiB budget ({budget.label}).",
            f"apply the report's suggestions until it fits{best}, or write `memory auto` in `train`",
            span,
        )
    elif total > limit * (1 - MARGIN):
        bag.warning(
            "V406",
            f"The estimated peak of {vram.gib(total):.2f} GiB is within {MARGIN:.0%} of the "
            f"{vram.gib(limit):.2f} GiB budget; fragmentation can tip it over.",
            "apply the first suggestion below for headroom",
            span,
        )
    _sampling_over(est, limit, bag, span)


def _sampling_over(est, limit: int, bag: DiagnosticBag, span) -> None:
    sampling = next((p for p in est.phases if p.name == "sampling"), None)
    if sampling and est.step_bytes <= limit < sampling.bytes:
        bag.warning(
            "V405",
            f"Training fits, but sampling needs {vram.gib(sampling.bytes):.2f} GiB, over the "
            f"{vram.gib(limit):.2f} GiB budget.",
            "sample at a smaller size, sample less often, or turn sampling off",
            span,
        )


# ==== rendering =================================================================================
def render_text(report: LintReport) -> str:
    """The human report: components, total, budget, verdict, suggestions, then findings."""
    est = report.estimate
    lines = [_headline(report), ""]
    lines += [f"  {name:<12}{where}" for name, where in (report.models or {}).items()]
    lines += [""] if report.models else []
    lines.append(f"  {'component':<40}{'GiB':>8}")
    for c in est.components:
        lines.append(f"  {c.name:<40}{vram.gib(c.bytes):>8.2f}   {c.note}".rstrip())
    lines.append("  " + "-" * 48)
    lines.append(f"  {'training step':<40}{vram.gib(est.step_bytes):>8.2f}")
    for p in est.phases:
        lines.append(f"  {'peak while ' + p.name:<40}{vram.gib(p.bytes):>8.2f}")
    lines.append(f"  {'total (peak: ' + est.peak_phase + ')':<40}{vram.gib(est.total_bytes):>8.2f}")
    lines += _budget_lines(report)
    lines += _suggestion_lines(report)
    if report.fitted is not None:
        lines += ["", *report.fitted.lines()]
    lines += ["", "lint:"]
    lines.append(render_all(report.diagnostics) if report.diagnostics else "  no findings")
    return "\n".join(lines) + "\n"


def _headline(report: LintReport) -> str:
    est, a = report.estimate, report.recipe.adapter
    targets = " + ".join(a.targets) + (" + text encoders" if a.text_encoder else "")
    return (
        f"VRAM estimate for {report.trainer}: {est.bucket[0]}x{est.bucket[1]}, batch {est.batch}, "
        f"{a.algo} rank {a.rank} on {targets} ({est.adapter_params:,} parameters)"
    )


def _budget_lines(report: LintReport) -> list[str]:
    est, budget = report.estimate, report.budget
    if budget.bytes is None:
        return ["  budget: none given (no verdict)"]
    lines = [f"  {'budget (' + budget.label + ')':<40}{vram.gib(budget.bytes):>8.2f}"]
    spare = vram.gib(budget.bytes - est.total_bytes)
    verdict = (
        f"fits, {spare:.2f} GiB to spare" if spare >= 0 else f"does NOT fit: {-spare:.2f} GiB over"
    )
    dominant = est.dominant
    share = dominant.bytes / max(1, est.step_bytes)
    lines.append(f"  verdict: {verdict}")
    lines.append(f"  largest component: {dominant.name} ({share:.0%} of the training step)")
    return lines


def _suggestion_lines(report: LintReport) -> list[str]:
    if not report.suggestions:
        return ["", "suggestions: none (every memory measure is already on)"]
    lines = ["", "suggestions (largest saving first):"]
    for s in report.suggestions:
        lines.append(f"  {s.change}: −{vram.gib(s.saves_bytes):.2f} GiB, {s.cost}")
    return lines


def to_json(report: LintReport) -> dict:
    """The machine report (`--format json`)."""
    est = report.estimate
    return {
        "trainer": report.trainer,
        "total_bytes": est.total_bytes,
        "budget_bytes": report.budget.bytes,
        "fits": report.fits,
        "peak_phase": est.peak_phase,
        "components": [{"name": c.name, "bytes": c.bytes} for c in est.components],
        "phases": [{"name": p.name, "bytes": p.bytes} for p in est.phases],
        "suggestions": [s.to_dict() for s in report.suggestions],
        "memory_auto": [c for c, _ in report.fitted.switched] if report.fitted else None,
        "models": report.models,
        "diagnostics": [d.to_dict() for d in report.diagnostics],
    }
