"""What `lorafile eval` evaluates: a native run folder (its checkpoints, final adapter, plan,
logs and dataset) or a single LoRA file of any supported layout with a base model.

A run folder is what `lorafile train` writes (docs/native-trainer.md): `plan.json` (the recipe
with every setting resolved), `run.json`, `checkpoints/step-NNNNNN/<name>-stepNNNNNN.safetensors`
(the user-format adapter: the one with alpha, what users ship) and `<name>.safetensors`, the
final adapter. A recipe resolves to its output folder in the command (commands/eval.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler import dataset_count
from lorafile.compiler.diagnostics import fail
from lorafile.runtime.train.checkpoint import STEP_DIR, list_checkpoints
from lorafile.runtime.train.plan import plan_problem
from lorafile.runtime.train.run_state import read_run_file


@dataclass(frozen=True)
class Checkpoint:
    name: str
    """`step-000050`, `final`, or the LoRA file's stem."""
    step: int | None
    path: Path


@dataclass
class Target:
    kind: str
    """`run` or `file`."""
    path: Path
    base: Path | None
    checkpoints: list[Checkpoint]
    vae: Path | None = None
    plan: dict | None = None
    run: dict | None = None
    log_dir: Path | None = None
    training_images: list[Path] = field(default_factory=list)
    trigger: str | None = None
    subjects: list[str] = field(default_factory=list)
    """Sample prompts (or captions) the default prompt set is built from."""
    sample: dict | None = None


def resolve_target(path: Path, base: Path | None = None) -> Target:
    """A run folder or a LoRA file; E901/E902/E907 otherwise."""
    path = Path(path)
    if path.is_dir():
        return run_target(path, base)
    if path.is_file() and path.suffix == ".safetensors":
        if base is None:
            raise fail(
                "E902",
                f"`{path}` is a LoRA file: evaluating it needs the base model it was trained on.",
                "pass --base MODEL (a diffusers folder or a single-file SDXL .safetensors)",
            )
        return Target("file", path, base, [Checkpoint(path.stem, None, path)])
    raise fail(
        "E901",
        f"`{path}` is not a run folder, a recipe or a LoRA .safetensors file"
        + ("" if path.exists() else " (it does not exist)")
        + ".",
        "pass the output folder of `lorafile train`, its recipe, or a LoRA file with --base",
    )


def run_target(folder: Path, base: Path | None) -> Target:
    plan_file = folder / "plan.json"
    if not plan_file.is_file():
        raise fail(
            "E901",
            f"`{folder}` is not a lorafile run folder (it has no plan.json).",
            "pass the output folder of `lorafile train`, or a LoRA file with --base",
        )
    plan = read_plan(plan_file)
    run = read_run_file(folder / "run.json") or None
    resolved = plan["resolved"]
    checkpoints = run_checkpoints(folder, resolved["output"]["name"], run)
    if not checkpoints:
        raise fail(
            "E907",
            f"The run in `{folder}` has no checkpoint or adapter file yet.",
            "evaluate after the first `save every` checkpoint, or when the run has finished",
        )
    recipe = plan["recipe"]
    log_dir = Path(resolved["log"]["path"]) if resolved.get("log", {}).get("path") else None
    return Target(
        kind="run",
        path=folder,
        base=Path(base or resolved["base"]),
        vae=Path(resolved["vae"]) if resolved.get("vae") and base is None else None,
        checkpoints=checkpoints,
        plan=plan,
        run=run,
        log_dir=log_dir if log_dir and log_dir.is_dir() else _local_logs(folder),
        training_images=[
            Path(f["path"])
            for f in plan.get("files", [])
            if f.get("role") == "image" and "path" in f
        ],
        trigger=recipe.get("trigger"),
        subjects=_subjects(plan),
        sample=resolved.get("sample"),
    )


def read_plan(plan_file: Path) -> dict:
    """The run's plan.json; E901 when it cannot be read or is not a plan `lorafile train`
    wrote (a truncated copy, an edited file), rather than a traceback."""
    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise _not_a_plan(plan_file, f"it cannot be read as JSON ({why})") from None
    why = plan_problem(plan)  # the same check `lorafile plan` and `train PLAN.json` make
    if why:
        raise _not_a_plan(plan_file, why)
    return plan


def _not_a_plan(plan_file: Path, why: str):
    return fail(
        "E901",
        f"`{plan_file}` is not a plan that `lorafile train` wrote: {why}.",
        "pass the output folder of a `lorafile train` run as it wrote it, or evaluate one of "
        "its LoRA files with --base",
    )


def _local_logs(folder: Path) -> Path | None:
    """The run's own logs/ (a run folder copied elsewhere keeps its logs beside it)."""
    logs = folder / "logs"
    return logs if logs.is_dir() else None


def run_checkpoints(folder: Path, name: str, run: dict | None) -> list[Checkpoint]:
    """Every checkpoint's user-format adapter, oldest first, then the final adapter."""
    found = []
    for ckpt in list_checkpoints(folder):
        files = sorted(p for p in ckpt.glob("*.safetensors") if p.name != "adapter.safetensors")
        if files:
            found.append(Checkpoint(ckpt.name, int(STEP_DIR.match(ckpt.name).group(1)), files[0]))
    final = folder / f"{name}.safetensors"
    if final.is_file():
        step = (run or {}).get("step")
        if not (found and found[-1].step == step):  # a run stopped right after a save
            found.append(Checkpoint("final", step, final))
    return found


def _subjects(plan: dict) -> list[str]:
    """The sample prompts, then training captions, (the default prompt set strips the
    trigger from them, drops repeats and keeps the first few)."""
    sample = plan["resolved"].get("sample") or {}
    captions = [f.get("caption", "") for f in plan.get("files", []) if f["role"] == "image"]
    found = [c for c in dict.fromkeys([*sample.get("prompts", []), *captions]) if c]
    return found


def select_checkpoints(checkpoints: list[Checkpoint], which: str) -> list[Checkpoint]:
    """`all`, `last`, or steps `N,M` (`final` names the final adapter); E905 for a step that
    has no checkpoint."""
    if which == "all":
        return list(checkpoints)
    if which == "last":
        return checkpoints[-1:]
    wanted = [w.strip() for w in which.split(",") if w.strip()]
    chosen = []
    for word in wanted:
        match = [c for c in checkpoints if word in (c.name, str(c.step))]
        if not match:
            known = ", ".join(c.name if c.step is None else str(c.step) for c in checkpoints)
            raise fail(
                "E905",
                f"There is no checkpoint `{word}` to evaluate.",
                f"choose from: {known} (or `all`, `last`)",
            )
        chosen += [c for c in match if c not in chosen]
    return chosen


def list_images(folder: Path) -> list[Path]:
    """Images of a dataset folder (for memorisation with a LoRA-file target): the native
    trainer's listing, so memorisation compares against what a run would have trained on."""
    if not folder.is_dir():
        raise fail("E901", f"The dataset folder `{folder}` does not exist.", "pass --dataset DIR")
    return dataset_count.list_images(folder)
