"""The native backend: a recipe compiled to `plan.json` for lorafile's own trainer.

The native trainer expresses every recipe setting, so `write` never reports T5xx "cannot
express" errors; its diagnostics are about the data it found (T56x, docs/diagnostics.md).
`read` returns the recipe a plan was built from, so `lorafile train plan.json` and
`lorafile migrate plan.json --target kohya` work like any other input.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorafile.backends.base import Backend, Compiled, register
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.files import is_dir, is_file, real_path
from lorafile.spec import Recipe

PLAN_FILE = "plan.json"


@register
class Native(Backend):
    name = "native"
    description = (
        "lorafile's own trainer (torch, diffusers, peft): writes plan.json for `lorafile train`"
    )

    def __init__(self, allow_lossy: bool = False, base_dir: Path | None = None):
        super().__init__(allow_lossy=allow_lossy)
        self.base_dir = base_dir
        """Folder that relative recipe paths are resolved against (default: the folder of the
        file the diagnostics bag names, i.e. the recipe, else the working folder)."""

    def write(self, recipe: Recipe, bag: DiagnosticBag) -> Compiled:
        from lorafile.runtime.train.plan import build_plan

        base_dir = self.base_dir
        if base_dir is None and bag.file and is_file(bag.file):
            # Relative recipe paths mean "next to the recipe", as for `lorafile train R.recipe`.
            base_dir = real_path(bag.file).parent
        plan = build_plan(recipe, bag, base_dir)
        return Compiled(files={PLAN_FILE: json.dumps(plan, indent=2) + "\n"})

    def read(self, path: Path, bag: DiagnosticBag, **options) -> Recipe:
        from lorafile.runtime.train.plan import recipe_of

        path = Path(path)
        if is_dir(path):
            path = path / PLAN_FILE
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
            return recipe_of(plan)
        except (OSError, ValueError, KeyError) as err:
            bag.error(
                "I601",
                f"`{path}` is not a lorafile plan: {err}",
                "compile a recipe with `--target native` to get one",
            )
            bag.raise_if_errors()
            raise  # unreachable: raise_if_errors raised
