"""Memory measures, the suggestions `lorafile lint` ranks, and `memory auto` (fit to a budget).

A measure is one change that lowers peak VRAM at some speed or quality cost. `suggest` applies
each measure alone and ranks them by memory saved. `fit_recipe` (for `memory auto`) searches the
combinations of the measures that only cost speed and picks the one with the lowest total speed
cost that fits the budget; ties go to the fewest changes, then to the most headroom. In order of speed cost
(docs/vram.md §Fitting):

  1. cache text-encoder outputs   no speed cost         needs frozen TEs, no caption shuffle/dropout
  2. cache latents                faster                 no color augmentation
  3. 8-bit optimizer state        ~2 %                   AdamW -> AdamW8bit, Lion -> Lion8bit
  4. smaller micro-batch          ~35 % per halving      same effective batch via accumulation
  5. gradient checkpointing       ~60 % (45-80 %)        measured +20 % to +78 %
  6. fp8 base weights             ~100 % (kohya est.),   SimpleTuner/torchao measured 2.7x
                                  170 % (SimpleTuner)

Measures with a quality cost (train the UNet only, halve the rank) are suggested, never
switched on automatically.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from lorafile.compiler import vram
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
from lorafile.spec import Recipe

State = tuple[Recipe, vram.Setup]


def _train(recipe: Recipe, **update) -> Recipe:
    return recipe.model_copy(update={"train": recipe.train.model_copy(update=update)})


def _cache(recipe: Recipe, **update) -> Recipe:
    return _train(recipe, cache=recipe.train.cache.model_copy(update=update))


def _adapter(recipe: Recipe, **update) -> Recipe:
    return recipe.model_copy(update={"adapter": recipe.adapter.model_copy(update=update)})


@dataclass(frozen=True)
class Measure:
    key: str
    change: str
    """What to do, as a sentence fragment: "cache text-encoder outputs"."""
    cost: str
    """Its speed or quality cost, for people."""
    speed_cost: float
    """Relative step-time increase; the fitting objective."""
    applies: Callable[[Recipe, vram.Setup], bool]
    apply: Callable[[Recipe, vram.Setup], State]
    auto: bool = True
    """False: a quality trade-off that `memory auto` never makes."""


def _profile(setup: vram.Setup) -> vram.TrainerProfile:
    return vram.TRAINERS[setup.trainer]


def _can_cache_text(r: Recipe, s: vram.Setup) -> bool:
    shuffles = any(d.shuffle_captions or d.caption_dropout > 0 for d in r.datasets)
    cached = r.train.cache.text or _profile(s).caches_text
    return not cached and not r.adapter.text_encoder and not shuffles


def _can_cache_latents(r: Recipe, s: vram.Setup) -> bool:
    cached = r.train.cache.latents or _profile(s).caches_latents
    return not cached and not any(d.color_aug for d in r.datasets)


_EIGHT_BIT = {"adamw": "adamw8bit", "lion": "lion8bit"}


def _fp8_cost(r: Recipe, s: vram.Setup) -> str:
    if s.trainer == "simpletuner":
        return "about 2.7x slower steps (torchao float8, measured on H100), small quality loss"
    return "slower steps without fp8 matrix units, small quality loss"


MEASURES: tuple[Measure, ...] = (
    Measure(
        "attention", "use SDPA attention (`sdpa = true`)", "no cost, usually faster", 0.0,
        lambda r, s: (s.attention or _profile(s).attention) == "naive",
        lambda r, s: (r, replace(s, attention="sdpa")), auto=False,
    ),
    Measure(
        "cache_text", "cache text-encoder outputs", "no speed cost, requires UNet-only training "
        "and no caption shuffling or dropout", 0.0,
        _can_cache_text, lambda r, s: (_cache(r, text=True), s),
    ),
    Measure(
        "cache_latents", "cache latents", "faster (no VAE encode per step), disables color "
        "augmentation", 0.0,
        _can_cache_latents, lambda r, s: (_cache(r, latents=True), s),
    ),
    Measure(
        "optimizer_8bit", "use an 8-bit optimizer", "about 2 % slower, state quantized to 8 bits",
        0.02,
        lambda r, s: r.train.optimizer in _EIGHT_BIT,
        lambda r, s: (_train(r, optimizer=_EIGHT_BIT[r.train.optimizer]), s),
    ),
    Measure(
        "checkpointing", "turn on gradient checkpointing", "about 45-80 % slower steps", 0.6,
        lambda r, s: not r.train.checkpointing,
        lambda r, s: (_train(r, checkpointing=True), s),
    ),
    Measure(
        "fp8_base", "store the base weights in fp8", "", 1.0,
        lambda r, s: r.train.effective_base_precision != "fp8" and s.base_dtype is None,
        lambda r, s: (_train(r, base_precision="fp8"), s),
    ),
    Measure(
        "unet_only", "train the UNet only (no text-encoder LoRA)",
        "quality: the text encoders stop learning the trigger", 0.0,
        lambda r, s: r.adapter.text_encoder,
        lambda r, s: (_adapter(r, text_encoder=False), s), auto=False,
    ),
    Measure(
        "rank", "halve the rank", "quality: less adapter capacity", 0.0,
        lambda r, s: r.adapter.rank >= 8,
        lambda r, s: (_adapter(r, rank=r.adapter.rank // 2,
                               conv_rank=max(1, r.adapter.effective_conv_rank // 2)), s),
        auto=False,
    ),
)  # fmt: skip
BATCH_HALVING_COST = 0.35


def _cost_text(measure: Measure, r: Recipe, s: vram.Setup) -> str:
    return _fp8_cost(r, s) if measure.key == "fp8_base" else measure.cost


def _micro_batch(r: Recipe, batch: int) -> Recipe:
    factor = r.train.batch // batch
    return _train(r, batch=batch, accumulate=r.train.accumulate * factor)


@dataclass(frozen=True)
class Suggestion:
    change: str
    saves_bytes: int
    cost: str

    def to_dict(self) -> dict:
        return {"change": self.change, "saves_bytes": self.saves_bytes, "cost": self.cost}


def suggest(recipe: Recipe, setup: vram.Setup) -> list[Suggestion]:
    """Each applicable measure alone, with the memory it saves, largest saving first."""
    recipe, _ = vram.resolve_auto(recipe, vram.hardware_budget(recipe), setup.trainer)
    before = vram.estimate(recipe, setup=setup).total_bytes
    found = []
    for m in MEASURES:
        if m.applies(recipe, setup):
            r2, s2 = m.apply(recipe, setup)
            found.append((m.change, r2, s2, _cost_text(m, recipe, setup)))
    if recipe.train.batch > 1:
        change = f"train at batch 1 with accumulate {recipe.train.accumulate * recipe.train.batch}"
        cost = "same effective batch, about 35 % slower per halving"
        found.append((change, _micro_batch(recipe, 1), setup, cost))
    out = []
    for change, r2, s2, cost in found:
        saved = before - vram.estimate(r2, setup=s2).total_bytes
        if saved > 0:
            out.append(Suggestion(change, saved, cost))
    return sorted(out, key=lambda s: -s.saves_bytes)


@dataclass
class FitReport:
    """What `memory auto` did, for `plan`/`compile` to print."""

    budget_bytes: int
    before_bytes: int
    after_bytes: int
    switched: list[tuple[str, str]] = field(default_factory=list)
    """(change, why) for each measure switched on, in the documented order."""

    @property
    def fits(self) -> bool:
        return self.after_bytes <= self.budget_bytes

    def lines(self) -> list[str]:
        head = (
            f"memory auto: {vram.gib(self.before_bytes):.2f} GiB as written, "
            f"{vram.gib(self.after_bytes):.2f} GiB after fitting, budget "
            f"{vram.gib(self.budget_bytes):.2f} GiB"
        )
        if not self.switched:
            return [head, "  nothing switched on: the recipe fits as written"]
        return [head] + [f"  switched on: {change} ({why})" for change, why in self.switched]


def _candidates(recipe: Recipe, setup: vram.Setup):
    """Yield (speed cost, [measures], micro-batch) for every combination `memory auto` may use."""
    auto = [m for m in MEASURES if m.auto and m.applies(recipe, setup)]
    batches = [d for d in range(recipe.train.batch, 0, -1) if recipe.train.batch % d == 0]
    for n in range(len(auto) + 1):
        for combo in itertools.combinations(auto, n):
            for b in batches:
                halvings = math.log2(recipe.train.batch / b)
                yield (
                    sum(m.speed_cost for m in combo) + BATCH_HALVING_COST * halvings,
                    list(combo),
                    b,
                )


def _apply_all(recipe: Recipe, setup: vram.Setup, measures: list[Measure], batch: int) -> State:
    for m in measures:
        recipe, setup = m.apply(recipe, setup)
    if batch != recipe.train.batch:
        recipe = _micro_batch(recipe, batch)
    return recipe, setup


def fit_recipe(
    recipe: Recipe, budget_bytes: int, trainer: str = "native"
) -> tuple[Recipe, FitReport]:
    """Switch on the cheapest (in speed) set of memory measures that fits `budget_bytes`.

    Returns the changed recipe and a report of what was switched on and why. Raises
    DiagnosticError (V403) with the closest achievable total when nothing fits. `auto`
    settings are chosen first (vram.resolve_auto), against the same budget.
    """
    recipe, _ = vram.resolve_auto(recipe, budget_bytes, trainer)
    setup = vram.setup_for(recipe, trainer)
    before = vram.estimate(recipe, setup=setup).total_bytes
    if before <= budget_bytes:
        return recipe, FitReport(budget_bytes, before, before)
    best, closest = None, None
    for cost, combo, batch in _candidates(recipe, setup):
        r2, s2 = _apply_all(recipe, setup, combo, batch)
        total = vram.estimate(r2, setup=s2).total_bytes
        if closest is None or total < closest:
            closest = total
        key = (cost, len(combo), total)
        if total <= budget_bytes and (best is None or key < best[0]):
            best = (key, total, combo, batch, r2)
    if best is None:
        raise DiagnosticError([_cannot_fit(budget_bytes, closest or before)])
    _, total, combo, batch, fitted = best
    report = FitReport(budget_bytes, before, total, _reasons(recipe, setup, combo, batch))
    return fitted, report


def _reasons(recipe: Recipe, setup: vram.Setup, combo: list[Measure], batch: int):
    out = []
    for m in combo:
        out.append((m.change, f"{_cost_text(m, recipe, setup)}; needed to fit the budget"))
    if batch != recipe.train.batch:
        accumulate = recipe.train.accumulate * recipe.train.batch // batch
        out.append((f"micro-batch {batch} with accumulate {accumulate}",
                    "keeps the effective batch; needed to fit the budget"))  # fmt: skip
    return out


def _cannot_fit(budget: int, closest: int):
    bag = DiagnosticBag()
    return bag.error(
        "V403",
        f"The recipe cannot fit {vram.gib(budget):.2f} GiB even with every memory measure: the "
        f"closest is {vram.gib(closest):.2f} GiB.",
        "lower the resolution or the rank, train the UNet only, or use a GPU with more memory",
    )
