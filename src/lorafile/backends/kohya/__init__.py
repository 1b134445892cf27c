"""kohya sd-scripts (`sdxl_train_network.py`): write recipes as kohya configs, read them back.

    write:  Recipe -> project (T5xx) -> config.toml, dataset.toml, sample_prompts.txt, train.sh
    read:   config.toml [+ dataset.toml | <repeats>_<class> folders] [+ prompts] -> Recipe

Modules: options (the argparse table), schema (what sd-scripts does with a config), write,
read + mapping (mapping and I6xx diagnostics), load (a whole project), project (T5xx), compare.
Mapping table: docs/backends/kohya.md. Facts: ../shared/reference/kohya.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lorafile.backends.base import Backend, Compiled, register
from lorafile.backends.kohya import write as kw
from lorafile.backends.kohya.load import read_config
from lorafile.backends.kohya.project import project as project_recipe
from lorafile.backends.tomlio import IntOutOfRange
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
from lorafile.spec.models import Recipe


@register
class Kohya(Backend):
    """kohya-ss/sd-scripts, SDXL LoRA and LyCORIS (`networks.lora`, `lycoris.kohya`)."""

    name: ClassVar[str] = "kohya"
    description: ClassVar[str] = (
        "kohya sd-scripts sdxl_train_network.py (config.toml + dataset.toml)"
    )

    def write(self, recipe: Recipe, bag: DiagnosticBag) -> Compiled:
        projected, reasons = project_recipe(recipe)
        for reason in reasons:
            if reason.lossy:
                self.unsupported(bag, reason.code, reason.message, reason.help)
            else:
                bag.info(reason.code, reason.message, reason.help)
        try:
            files, executable = kw.write_files(projected)
        except IntOutOfRange as err:
            bag.error(
                "T590",
                f"`{err.key}` would be {err.value}, beyond the 64-bit integers TOML can hold; "
                "sd-scripts could not read config.toml.",
                "use a smaller number",
            )
            raise DiagnosticError(bag.items) from None
        return Compiled(files=files, executable=executable)

    def project(self, recipe: Recipe) -> Recipe:
        return project_recipe(recipe)[0]

    def read(self, path: Path, bag: DiagnosticBag, **options) -> Recipe:
        """Read a `--config_file` TOML (or a folder holding config.toml).

        Options: `dataset_config` (the `--dataset_config` file), `sample_prompts` (the prompts
        file, when the config's path does not resolve here), `accelerate_config`.
        """
        return read_config(Path(path), bag, **options)


__all__ = ["Kohya", "read_config"]
