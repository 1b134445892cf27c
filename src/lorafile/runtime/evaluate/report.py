"""report.json and index.html: the grids, the scores table, the loss curve, the recipe.

index.html is rendered from a jinja2 template (`lorafile/data/templates/eval.html.j2`) with
relative links only and inline CSS: it works opened from disk, with no server and no network.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from lorafile.files import write_text_atomic
from lorafile.runtime.evaluate import scores as S
from lorafile.runtime.evaluate.curves import plot_loss, read_scalars
from lorafile.runtime.evaluate.grid import make_labelled_grid

REPORT_VERSION = 1
TEMPLATE = "eval.html.j2"


def write_report(evaluation, base, results: list[dict]) -> Path:
    """Write grids, loss curve, report.json and index.html into evaluation.out; returns the
    index.html path."""
    out = evaluation.out
    for result in results:
        result["grid"] = _checkpoint_grid(evaluation, result)
    cross = _cross_grid(evaluation, base, results)
    loss = _loss_curve(evaluation)
    report = build_report(evaluation, base, results, cross, loss)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    page = render_html(report)
    return write_text_atomic(out / "index.html", page)


def _rel(evaluation, path: Path | None) -> str | None:
    return None if path is None else path.relative_to(evaluation.out).as_posix()


def _row_labels(evaluation) -> list[tuple[str, str]]:
    return [(p.text, p.group) for p in evaluation.prompts.prompts]


def _checkpoint_grid(evaluation, result: dict) -> Path:
    keys = list(result["columns"])
    rows = [
        [result["columns"][k].images[r] for k in keys]
        for r in range(len(evaluation.prompts.prompts))
    ]
    name = result["checkpoint"].name
    return make_labelled_grid(
        rows,
        _row_labels(evaluation),
        [f"strength {k}" for k in keys],
        f"{name}: rows prompts (seed fixed per row), columns LoRA strength",
        evaluation.out / "grids" / f"{name}.png",
    )


def _cross_grid(evaluation, base, results: list[dict]) -> Path | None:
    if not results:
        return None
    key = S.strength_key(evaluation.headline)
    columns = [base] + [r["columns"][key] for r in results]
    labels = ["base"] + [r["checkpoint"].name for r in results]
    rows = [[c.images[r] for c in columns] for r in range(len(evaluation.prompts.prompts))]
    return make_labelled_grid(
        rows,
        _row_labels(evaluation),
        labels,
        f"every checkpoint at strength {key}: rows prompts, columns checkpoints",
        evaluation.out / "grids" / "checkpoints.png",
    )


def _loss_curve(evaluation) -> Path | None:
    points = read_scalars(evaluation.target.log_dir) if evaluation.target.log_dir else []
    marks = [c.step for c in evaluation.checkpoints if c.step is not None]
    return plot_loss(points, marks, evaluation.out / "loss.svg")


def build_report(evaluation, base, results: list[dict], cross: Path | None, loss) -> dict:
    """Everything the page shows, as plain JSON (paths relative to the report's folder)."""
    target, headline = evaluation.target, S.strength_key(evaluation.headline)
    named = [
        (r["checkpoint"].name, r["scores"][headline]) for r in results if headline in r["scores"]
    ]
    best, sentence = S.best_checkpoint(named)
    return {
        "lorafile_eval": REPORT_VERSION,
        "target": {"kind": target.kind, "path": str(target.path)},
        "base": str(target.base),
        "settings": _settings(evaluation),
        "prompts": evaluation.prompts.to_dict(),
        "base_images": [_rel(evaluation, p) for p in base.paths],
        "checkpoints": [_checkpoint_entry(evaluation, r) for r in results],
        "headline": headline,
        "cross_grid": _rel(evaluation, cross),
        "best": {"checkpoint": best, "sentence": sentence},
        "loss_curve": _rel(evaluation, loss),
        "recipe": _recipe_text(target.plan),
        "run": target.run,
        "resolved": (target.plan or {}).get("resolved"),
        "training_images": evaluation.training_count,
    }


def _settings(evaluation) -> dict:
    s = evaluation.settings
    return {
        "sampler": s.sampler,
        "steps": s.steps,
        "cfg": s.cfg,
        "size": list(s.size),
        "negative": s.negative,
        "seed": evaluation.seed,
        "strengths": evaluation.strengths,
        "device": str(evaluation.device),
    }


def _checkpoint_entry(evaluation, result: dict) -> dict:
    c = result["checkpoint"]
    return {
        "name": c.name,
        "step": c.step,
        "file": str(c.path),
        "grid": _rel(evaluation, result["grid"]),
        "images": {
            k: [_rel(evaluation, p) for p in col.paths] for k, col in result["columns"].items()
        },
        "scores": {k: s.to_dict() for k, s in result["scores"].items()},
    }


def _recipe_text(plan: dict | None) -> str | None:
    """The recipe the run trained, in canonical form (from plan.json)."""
    if not plan or "recipe" not in plan:
        return None
    from lorafile.compiler.format import format_recipe
    from lorafile.spec.models import Recipe

    return format_recipe(Recipe.model_validate(plan["recipe"]))


def render_html(report: dict) -> str:
    """index.html from the packaged jinja2 template (autoescaped)."""
    import jinja2

    text = resources.files("lorafile").joinpath("data", "templates", TEMPLATE).read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    return env.from_string(text).render(report=report, score_names=SCORE_COLUMNS)


SCORE_COLUMNS = (
    ("effect", "effect", "mean change on strong prompts (0: no effect, under-trained)"),
    ("bleeding", "bleeding", "change on free prompts / change on trigger prompts (0: none)"),
    ("diversity_ratio", "diversity", "spread of strong outputs / the base's (low: mode collapse)"),
    ("memorisation", "memorisation", "nearest training image similarity (1: a copy)"),
    ("tradeoff", "trade-off", "effect x (1 - bleeding) x diversity x (1 - extra memorisation)"),
)
