"""The SimpleTuner backend (github.com/bghira/SimpleTuner, v4.x): write and read its config folder.

Files written into the output folder:
    config.json (or config.toml)   arguments without leading dashes (documentation/OPTIONS.md)
    multidatabackend.json          one entry per dataset and regularisation set, one text_embeds
    lycoris_config.json            for locon/loha (documentation/LYCORIS.md)
    user_prompt_library.json       when the recipe samples more than one prompt
    train.sh                       `simpletuner train` run from this folder

The mapping lives in `mapping` (what changes meaning), `write` (spelling), `load`/`read`
(every input form) and `passthrough` (settings with
no recipe field). docs/backends/simpletuner.md is the table for people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from lorafile.backends.base import Backend, Compiled, register
from lorafile.backends.simpletuner import mapping as m
from lorafile.backends.simpletuner import passthrough as pt
from lorafile.backends.simpletuner import write as w
from lorafile.backends.simpletuner.read import read_recipe
from lorafile.backends.tomlio import IntOutOfRange
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, Severity
from lorafile.files import is_file, real_path
from lorafile.spec import Recipe

FORMATS = ("json", "toml")
_LIMIT_KEYS = ("minimum_aspect_ratio", "maximum_aspect_ratio")


@register
class SimpleTuner(Backend):
    """SimpleTuner: config.json/toml + multidatabackend.json (+ lycoris_config.json)."""

    name: ClassVar[str] = "simpletuner"
    description: ClassVar[str] = "SimpleTuner config folder (config.json, multidatabackend.json)"
    formats: ClassVar[tuple[str, ...]] = FORMATS

    def __init__(self, allow_lossy: bool = False, options: dict | None = None):
        super().__init__(allow_lossy=allow_lossy)
        self.options: dict = dict(options or {})
        """`format`: "json" (default) or "toml" for the main config file; `base_dir`: the folder
        relative dataset paths are resolved against (default: the folder of the file the
        diagnostics bag names, i.e. the recipe, else the working folder)."""

    def write(self, recipe: Recipe, bag: DiagnosticBag, format: str | None = None) -> Compiled:
        """SimpleTuner's files for `recipe`; every setting it cannot express is a T5xx."""
        fmt = format or self.options.get("format") or "json"
        if fmt not in FORMATS:
            bag.error(
                "T549",
                f"SimpleTuner config format `{fmt}` is not supported.",
                "use --format json or --format toml",
            )
            fmt = "json"
        report = self._reporter(bag)
        normal = m.normalize(recipe, report, self._base_dir(bag))
        gen = w.generate(normal)
        pt.apply(gen, normal, report)
        try:
            config_name, config_text = w.render_config(_without_none(gen.config), fmt)
        except IntOutOfRange as err:
            bag.error(
                "T591",
                f"`{err.key}` would be {err.value}, beyond the 64-bit integers TOML can hold.",
                "use a smaller number, or write config.json (--format json)",
            )
            raise DiagnosticError(bag.items) from None
        files = {
            config_name: config_text,
            w.DATA_BACKEND_FILE: json.dumps(gen.datasets, indent=2) + "\n",
        }
        if gen.lycoris is not None:
            files[w.LYCORIS_FILE] = json.dumps(gen.lycoris, indent=2) + "\n"
        if gen.prompts:
            files[w.PROMPT_LIBRARY_FILE] = json.dumps(gen.prompts, indent=2) + "\n"
        files["train.sh"] = w.render_train_sh(normal, config_name)
        return Compiled(files=files, executable={"train.sh"})

    def read(self, path: Path, bag: DiagnosticBag, **options) -> Recipe:
        """A recipe from a SimpleTuner config folder, config.json/.toml/.env, or legacy YAML."""
        return read_recipe(Path(path), bag)

    def project(self, recipe: Recipe) -> Recipe:
        """The recipe as SimpleTuner runs it: `read(write(recipe)) == project(recipe)`."""
        normal = m.normalize(recipe, lambda *args: None, self._base_dir(None))
        passthrough = pt.project(normal)
        datasets = []
        for i, ds in enumerate(normal.datasets):
            side = ds.resolution.width
            if ds.buckets.enabled:
                written = m.aspect_limits(ds.buckets, side)
                ds = ds.model_copy(update={"buckets": m.limits_to_buckets(written, side)})
                # The read-back buckets may give slightly different limits; the reader keeps
                # the written ones in passthrough so that a re-export is the same file.
                again = m.aspect_limits(ds.buckets, side)
                for key, old, new in zip(_LIMIT_KEYS, written, again, strict=True):
                    if old != new:
                        passthrough[f"datasets.{i}.{key}"] = old
            datasets.append(ds)
        return normal.model_copy(
            update={
                "datasets": tuple(datasets),
                "passthrough": {"simpletuner": passthrough} if passthrough else {},
            }
        )

    def _base_dir(self, bag: DiagnosticBag | None) -> Path | None:
        # Where the dataset folders are counted (a warmup % of an epoch-counted run, T550).
        if self.options.get("base_dir") is not None:
            return Path(self.options["base_dir"])
        if bag is not None and bag.file and is_file(bag.file):
            return real_path(bag.file).parent  # relative paths mean "next to the recipe"
        return None

    def _reporter(self, bag: DiagnosticBag):
        def report(code: str, message: str, help: str, loss: bool | None) -> None:
            if loss:
                self.unsupported(bag, code, message, help)
            elif loss is None:
                bag.info(code, message, help)
            else:
                bag.add(code, message, help, severity=Severity.WARNING)

        return report


def _without_none(config: dict) -> dict:
    return {k: v for k, v in config.items() if v is not None}
