"""`lorafile card`: a Hugging Face model card (README.md) for a trained LoRA, from a jinja2
template (`lorafile/data/templates/model_card.md.j2`).

TARGET is a native run folder (what `lorafile train -o` writes: plan.json, run.json, the
adapter, samples/) or a LoRA file (plan.json beside it is used when present; any kohya file
works, with what its `ss_*` metadata says). The card holds:

* YAML front matter: `base_model`, `license` (a placeholder the user must replace),
  `instance_prompt` (the trigger), `tags`, and `widget` entries (prompt + image) from the
  eval report's images, else from the last samples/step-*/ folder;
* the trigger and how to use the file: diffusers, ComfyUI (with the `--comfyui` workflow),
  AUTOMATIC1111's `<lora:name:1>`;
* the recipe's training settings and the file's `ss_*` metadata;
* optional sections, each only when its report exists (other commands write them):

  - **dataset** from a `prep` JSON report, searched as `--prep FILE`, else `prep.json` or
    `prep/report.json` in the run folder or its parent. Minimal shape:
    `{"dataset": str, "images": [ {"problems": [{"kind": str}]} ] | int, "summary": {str: scalar}}`
    (every key optional);
  - **evaluation** from an `eval` report, `--eval FILE`, else `eval/report.json` or
    `report.json` in the run folder or `eval/report.json` in its parent. Minimal shape:
    `{"checkpoints": [{"name": str, "scores": {str: number}}], "best": {"name": str,
    "reason": str}, "images": [{"path": str (relative to the report), "prompt": str}]}`
    (a flat `{"scores": {...}}` is read as one row).

Diagnostic codes: F726 no LoRA file found for TARGET, F727 a report that is not readable JSON
(warning; the section is left out), F728 the output exists (pass --force).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag, fail
from lorafile.runtime.lorafiles.convert import read_metadata

DEFAULT_BASE_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
LICENSE_PLACEHOLDER = "TODO-fill-in-the-license"
TEMPLATE = "model_card.md.j2"
# ss_* keys shown in the card, in this order (sd-scripts train_network.py writes them).
METADATA_KEYS = (
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "ss_steps",
    "ss_max_train_steps",
    "ss_num_epochs",
    "ss_num_train_images",
    "ss_num_reg_images",
    "ss_batch_size_per_device",
    "ss_gradient_accumulation_steps",
    "ss_learning_rate",
    "ss_unet_lr",
    "ss_text_encoder_lr",
    "ss_lr_scheduler",
    "ss_lr_warmup_steps",
    "ss_optimizer",
    "ss_mixed_precision",
    "ss_resolution",
    "ss_seed",
    "ss_noise_offset",
    "ss_min_snr_gamma",
    "ss_clip_skip",
    "ss_base_model_version",
)


@dataclass
class RunFiles:
    """What TARGET points at: the adapter and, when found, the run's plan and folder."""

    adapter: Path
    folder: Path
    plan: dict | None = None
    run: dict | None = None


def read_json(path: Path, bag: DiagnosticBag, what: str) -> dict | None:
    """A JSON object, or None with an F727 warning when the file is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        bag.warning(
            "F727",
            f"The {what} `{path}` is not readable JSON ({err}); its section is left out.",
            "Re-run the command that writes it, or pass another file.",
        )
        return None
    if not isinstance(data, dict):
        bag.warning(
            "F727",
            f"The {what} `{path}` is not a JSON object; its section is left out.",
            "Pass the report the command wrote.",
        )
        return None
    return data


def read_plan(path: Path, bag: DiagnosticBag) -> dict | None:
    """The run's plan.json, or None with an F727 warning when it is not one `lorafile train`
    wrote (not JSON, or sections of the wrong kind: an edited or damaged file)."""
    plan = read_json(path, bag, "plan")
    why = _plan_shape_problem(plan) if plan is not None else ""
    if why:
        bag.warning(
            "F727",
            f"The plan `{path}` is not one `lorafile train` wrote: {why}; its section is left out.",
            "Re-run `lorafile train` (or `lorafile compile --target native`) to write it again.",
        )
        return None
    return plan


def _plan_shape_problem(plan: dict) -> str:
    """What is not as the card reads it ('' when all is): the sections and their kinds."""
    res, recipe = plan.get("resolved"), plan.get("recipe")
    if not isinstance(res, dict) or not isinstance(recipe, dict):
        return "it has no `resolved` and `recipe` sections"
    for name, value in (
        ("resolved.output", res.get("output", {})),
        ("resolved.sample", res.get("sample") or {}),
        ("recipe.adapter", recipe.get("adapter", {})),
        ("recipe.train", recipe.get("train", {})),
    ):
        if not isinstance(value, dict):
            return f"`{name}` is not a section"
    datasets = recipe.get("datasets") or []
    if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
        return "`recipe.datasets` is not a list of sections"
    return ""


def find_run(target: str | os.PathLike, bag: DiagnosticBag) -> RunFiles:
    """The adapter and plan for TARGET (run folder or LoRA file); F726 when there is none."""
    target = Path(target)
    if target.is_file():
        folder = target.parent
        plan_path = folder / "plan.json"
        plan = read_plan(plan_path, bag) if plan_path.is_file() else None
        return RunFiles(target, folder, plan, _run_json(folder, bag))
    plan_path = target / "plan.json"
    if target.is_dir() and plan_path.is_file():
        plan = read_plan(plan_path, bag)
        name = (resolved(plan).get("output") or {}).get("name")
        adapter = target / f"{name}.safetensors" if name else None
        if adapter is not None and adapter.is_file():
            return RunFiles(adapter, target, plan, _run_json(target, bag))
    loras = sorted(target.glob("*.safetensors")) if target.is_dir() else []
    if len(loras) == 1:
        return RunFiles(loras[0], target, None, _run_json(target, bag))
    raise fail(
        "F726",
        f"No LoRA file found for `{target}`.",
        "Give a run folder (with plan.json and the adapter `lorafile train` wrote) or a "
        "LoRA .safetensors file.",
    )


def resolved(plan: dict | None) -> dict:
    """The plan's resolved settings (output, sample, base, seed); `plan.json` nests them
    under "resolved"."""
    plan = plan or {}
    return plan.get("resolved") or plan


def _run_json(folder: Path, bag: DiagnosticBag) -> dict | None:
    path = folder / "run.json"
    return read_json(path, bag, "run file") if path.is_file() else None


def find_report(explicit, candidates: list[Path], bag: DiagnosticBag,
                what: str) -> tuple[dict | None, Path | None]:  # fmt: skip
    """The report at `explicit`, else at the first of `candidates` that exists."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            bag.warning(
                "F727",
                f"The {what} `{path}` does not exist; its section is left out.",
                "Check the path.",
            )
            return None, None
        return read_json(path, bag, what), path
    for path in candidates:
        if path.is_file():
            return read_json(path, bag, what), path
    return None, None


def file_metadata(path: Path) -> dict[str, str]:
    """The metadata of a LoRA file (no tensors loaded; the converter's F710 checks)."""
    return read_metadata(path)


@dataclass
class CardResult:
    path: Path
    text: str
    sections: list[str]
    widgets: int
    comfyui: Path | None = None
    warnings: DiagnosticBag = field(default_factory=DiagnosticBag)


# --- the template's context ----------------------------------------------------------------


def _plain(value) -> str:
    """A setting as table text: dicts as `k=v` pairs, lists joined, floats without noise."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items() if v is not None) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value).replace("|", "\\|")


def recipe_settings(plan: dict | None) -> list[tuple[str, str]]:
    """(setting, value) rows from the plan's recipe: adapter, schedule, data."""
    if not plan or "recipe" not in plan:
        return []
    r = plan["recipe"]
    adapter, train = r.get("adapter", {}), r.get("train", {})
    dataset = (r.get("datasets") or [{}])[0]
    size = dataset.get("resolution") or {}
    rows = [
        ("adapter", adapter.get("algo")),
        (
            "rank / alpha",
            f"{adapter.get('rank')} / {_plain(adapter.get('alpha') or adapter.get('rank'))}",
        ),
        ("targets", adapter.get("targets")),
        ("text encoders trained", adapter.get("text_encoder")),
        ("steps", train.get("steps") or f"{train.get('epochs')} epochs"),
        ("batch x accumulate", f"{train.get('batch')} x {train.get('accumulate')}"),
        ("learning rate", train.get("lr")),
        ("scheduler", train.get("scheduler")),
        ("warmup", train.get("warmup")),
        ("optimizer", train.get("optimizer")),
        ("precision", train.get("precision")),
        ("seed", resolved(plan).get("seed", train.get("seed"))),
        ("resolution", f"{size.get('width')}x{size.get('height')}" if size else None),
        ("dataset kind", dataset.get("kind")),
        ("repeats", dataset.get("repeats")),
    ]
    return [(k, _plain(v)) for k, v in rows if v is not None]


def metadata_rows(metadata: dict[str, str]) -> list[tuple[str, str]]:
    unset = (None, "", "None", "null")
    return [(k, _plain(metadata[k])) for k in METADATA_KEYS if metadata.get(k) not in unset]


def dataset_section(prep: dict | None, path: Path | None) -> dict | None:
    """The dataset summary from a prep report (minimal shape in the module docstring)."""
    if not prep:
        return None
    images = prep.get("images")
    count = len(images) if isinstance(images, list) else images
    rows = [("images", count)] if count is not None else []
    kinds: dict[str, int] = {}
    for item in images if isinstance(images, list) else []:
        for problem in (item or {}).get("problems") or []:
            kind = (problem or {}).get("kind", "other")
            kinds[kind] = kinds.get(kind, 0) + 1
    rows += [(f"problems: {k}", n) for k, n in sorted(kinds.items())]
    summary = prep.get("summary") if isinstance(prep.get("summary"), dict) else {}
    rows += [(k, v) for k, v in summary.items() if isinstance(v, str | int | float | bool)]
    where = prep.get("dataset") or (path.parent.name if path else "the dataset")
    return {
        "description": f"From the `lorafile prep` report on `{where}`.",
        "rows": [(k, _plain(v)) for k, v in rows],
    }


def evaluation_section(report: dict | None) -> dict | None:
    """The scores table from an eval report (minimal shape in the module docstring)."""
    if not report:
        return None
    rows = report.get("checkpoints")
    if not isinstance(rows, list):
        rows = (
            [{"name": "final", "scores": report.get("scores")}]
            if isinstance(report.get("scores"), dict)
            else []
        )
    rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("scores"), dict)]
    if not rows:
        return None
    columns = list(dict.fromkeys(k for r in rows for k in r["scores"]))
    table = [
        {"name": r.get("name", "?"), "cells": [_plain(r["scores"].get(c)) for c in columns]}
        for r in rows
    ]
    best = report.get("best") if isinstance(report.get("best"), dict) else {}
    sentence = (
        f"Best checkpoint: **{best['name']}**. {best.get('reason', '')}".strip()
        if best.get("name")
        else ""
    )
    return {"columns": columns, "rows": table, "best": sentence}


def widgets(
    card_dir: Path, run: RunFiles, report: dict | None, report_path: Path | None
) -> list[dict]:
    """Prompt + image pairs: the eval report's images, else the run's last samples."""
    found = []
    for item in (report or {}).get("images") or []:
        if isinstance(item, dict) and item.get("path") and report_path is not None:
            found.append((item.get("prompt", ""), report_path.parent / item["path"]))
    if not found:
        found = _sample_images(run)
    return [
        {"text": text, "url": Path(os.path.relpath(path, card_dir)).as_posix()}
        for text, path in found
        if path.is_file()
    ]


def _sample_images(run: RunFiles) -> list[tuple[str, Path]]:
    prompts = list((resolved(run.plan).get("sample") or {}).get("prompts") or [])
    steps = sorted((run.folder / "samples").glob("step-*"))
    if not steps or not prompts:
        return []
    return [(p, steps[-1] / f"{i:02d}.png") for i, p in enumerate(prompts)]


def card_context(
    run: RunFiles,
    out: Path,
    bag: DiagnosticBag,
    *,
    prep=None,
    eval_report=None,
    base_model: str | None = None,
    trigger: str | None = None,
    comfyui: Path | None = None,
) -> tuple[dict, list[str]]:
    """Everything the template needs, and the names of the optional sections present."""
    from lorafile.runtime.lorafiles.comfyui import settings_from_plan, strong_prompt

    metadata = file_metadata(run.adapter)
    recipe = (run.plan or {}).get("recipe", {})
    trigger = trigger or recipe.get("trigger")
    (prep_data, prep_path), (eval_data, eval_path) = reports(run, bag, prep, eval_report)
    sample = resolved(run.plan).get("sample") or {}
    flow = settings_from_plan(run.plan or {}, run.adapter.name)
    context = {
        "name": (resolved(run.plan).get("output") or {}).get("name")
        or metadata.get("ss_output_name")
        or run.adapter.stem,
        "file": run.adapter.name,
        "stem": run.adapter.stem,
        "trigger": trigger,
        "trigger_first": bool(recipe.get("trigger")),
        "license": LICENSE_PLACEHOLDER,
        "base_model": base_model or DEFAULT_BASE_MODEL,
        "tags": _tags(recipe),
        "widgets": widgets(out.parent, run, eval_data, eval_path),
        "summary": _summary(recipe, metadata, run.run),
        "prompt": strong_prompt(trigger, list(sample.get("prompts", []))),
        "steps": flow.steps,
        "cfg": _plain(flow.cfg),
        "width": flow.width,
        "height": flow.height,
        "comfyui": Path(os.path.relpath(comfyui, out.parent)).as_posix() if comfyui else None,
        "trainer": "lorafile's native trainer" if run.plan else "",
        "settings": recipe_settings(run.plan),
        "metadata": metadata_rows(metadata),
        "dataset": dataset_section(prep_data, prep_path),
        "evaluation": evaluation_section(eval_data),
    }
    sections = [s for s in ("dataset", "evaluation") if context[s]]
    return context, sections


def reports(run: RunFiles, bag: DiagnosticBag, prep, eval_report):
    """((prep, its path), (eval report, its path)): given, or found beside the run."""
    here, up = run.folder, run.folder.parent
    prep_paths = [here / "prep.json", here / "prep" / "report.json", up / "prep.json",
                  up / "prep" / "report.json"]  # fmt: skip
    eval_paths = [here / "eval" / "report.json", here / "report.json", up / "eval" / "report.json"]
    return (
        find_report(prep, prep_paths, bag, "prep report"),
        find_report(eval_report, eval_paths, bag, "eval report"),
    )


def _tags(recipe: dict) -> list[str]:
    tags = ["text-to-image", "stable-diffusion-xl", "lora", "diffusers", "lorafile"]
    kind = ((recipe.get("datasets") or [{}])[0]).get("kind")
    algo = (recipe.get("adapter") or {}).get("algo")
    tags += [t for t in (kind, algo if algo not in (None, "lora") else None) if t]
    return tags


def _summary(recipe: dict, metadata: dict, run: dict | None) -> str:
    adapter = recipe.get("adapter") or {}
    algo = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa"}.get(adapter.get("algo", ""), "LoRA")
    rank = adapter.get("rank") or metadata.get("ss_network_dim")
    steps = (run or {}).get("step") or metadata.get("ss_steps")
    parts = [f"A {algo} for Stable Diffusion XL"]
    if rank:
        parts.append(f" (rank {rank})")
    if steps:
        parts.append(f", trained for {steps} steps")
    parts.append(" with lorafile." if recipe else ".")
    return "".join(parts)


def render_card(context: dict) -> str:
    """The card text: the packaged jinja2 template rendered with `context`."""
    from importlib import resources

    import jinja2

    text = resources.files("lorafile").joinpath("data", "templates", TEMPLATE).read_text()
    env = jinja2.Environment(
        keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False
    )  # Markdown, not HTML
    return env.from_string(text).render(**context)


def write_card(
    target,
    out,
    *,
    comfyui=None,
    prep=None,
    eval_report=None,
    base_model=None,
    trigger=None,
    force: bool = False,
) -> CardResult:
    """Write the model card for TARGET to `out` (and the ComfyUI workflow to `comfyui`)."""
    from lorafile.files import write_text_atomic
    from lorafile.runtime.lorafiles.comfyui import settings_from_plan, workflow

    out = Path(out)
    for path in (out, Path(comfyui) if comfyui else None):
        if path is not None and path.exists() and not force:
            raise fail(
                "F728", f"`{path}` exists.", "Pass --force to replace it, or choose another path."
            )
    bag = DiagnosticBag()
    run = find_run(target, bag)
    flow_path = Path(comfyui) if comfyui else None
    context, sections = card_context(
        run,
        out,
        bag,
        prep=prep,
        eval_report=eval_report,
        base_model=base_model,
        trigger=trigger,
        comfyui=flow_path,
    )
    text = render_card(context)
    write_text_atomic(out, text)
    if flow_path is not None:
        settings = settings_from_plan(run.plan or {}, run.adapter.name)
        settings.positive = context["prompt"]
        write_text_atomic(flow_path, json.dumps(workflow(settings), indent=2) + "\n")
    return CardResult(out, text, sections, len(context["widgets"]), flow_path, bag)
