"""The evaluation scores, read off the test grid: bleeding, strength of effect, diversity,
memorisation, and the trade-off that picks a checkpoint. numpy only.

Every distance compares two images of the same prompt and seed (so the same starting noise):
what differs is the LoRA alone. Images are compared in pixel space, mapped to [-1, 1] (the
VAE's range), so the training-time samples (PNG files) and `lorafile eval` score alike.

    change(a, b) = |a - b| / sqrt(|a|^2 + |b|^2)          (|.| the Euclidean norm)

is 0 for identical images, 1 for uncorrelated ones (a.b = 0) and at most sqrt(2) (a = -b);
it does not depend on the images' size or overall contrast. docs/eval.md has each score's
formula, meaning and limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

MIN_EFFECT_SHARE = 0.5
"""For the sentence: a checkpoint whose effect is under this share of the strongest one's is
called under-trained."""
COLLAPSE_RATIO = 0.5
"""Diversity under this share of the base model's is called mode collapse."""
NEAR_COPY = 0.9
"""A perceptual-hash similarity at or above this is a near-copy of a training image."""


def strength_key(strength: float) -> str:
    """A strength as report.json spells it: 0, 0.5, 1."""
    return f"{strength:g}"


def as_vector(image) -> np.ndarray:
    """An image (PIL or uint8 array, H x W x C) as float64 pixels in [-1, 1], flattened."""
    pixels = np.asarray(image, dtype=np.float64)
    return (pixels / 127.5 - 1.0).ravel()


def change(a: np.ndarray, b: np.ndarray) -> float:
    """|a - b| / sqrt(|a|^2 + |b|^2): 0 identical, 1 uncorrelated, sqrt(2) opposite."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    scale = math.sqrt(float(a @ a + b @ b))
    return float(np.linalg.norm(a - b)) / scale if scale else 0.0


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def effect(lora: list, base: list) -> float | None:
    """Strength of effect: mean change(LoRA image, base image) over pairs of the same prompt
    and seed. Near 0: the LoRA does nothing to these prompts (under-trained, for strong ones)."""
    return mean(change(x, y) for x, y in zip(lora, base, strict=True))


def bleeding(free_change: float | None, trigger_change: float | None) -> float | None:
    """Mean change on trigger-free prompts over mean change on trigger prompts (strong and
    adjacent). 0: free prompts untouched; 1: the trigger makes no difference. None when there
    are no free prompts or the LoRA changes nothing on trigger prompts (no ratio)."""
    if free_change is None or not trigger_change:
        return None
    return free_change / trigger_change


def diversity(images: list) -> float | None:
    """Mean change over every pair of distinct images (None for fewer than two)."""
    pairs = list(combinations(images, 2))
    return mean(change(a, b) for a, b in pairs)


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def similarity(bits_a: np.ndarray, bits_b: np.ndarray) -> float:
    """Perceptual-hash similarity: the share of equal bits (1 identical, ~0.5 unrelated)."""
    a, b = np.asarray(bits_a, dtype=bool).ravel(), np.asarray(bits_b, dtype=bool).ravel()
    return float(np.mean(a == b))


def memorisation(outputs: list, training: list) -> float | None:
    """Mean, over the outputs' hashes, of the similarity to the nearest training image's hash.
    None without training images."""
    if not training or not outputs:
        return None
    return mean(max(similarity(o, t) for t in training) for o in outputs)


@dataclass
class Scores:
    """The scores of one checkpoint at one strength (None where not measurable)."""

    effect: float | None = None
    adjacent_effect: float | None = None
    free_effect: float | None = None
    bleeding: float | None = None
    diversity: float | None = None
    diversity_ratio: float | None = None
    memorisation: float | None = None
    memorisation_base: float | None = None

    @property
    def tradeoff(self) -> float | None:
        """effect x (1 - min(bleeding, 1)) x min(diversity ratio, 1) x (1 - max(0, memorisation
        - memorisation of the base)); a missing factor counts as 1, a missing effect as None."""
        if self.effect is None:
            return None
        value = self.effect
        if self.bleeding is not None:
            value *= 1 - min(self.bleeding, 1.0)
        if self.diversity_ratio is not None:
            value *= min(self.diversity_ratio, 1.0)
        if self.memorisation is not None and self.memorisation_base is not None:
            value *= 1 - max(0.0, self.memorisation - self.memorisation_base)
        return value

    def to_dict(self) -> dict:
        out = {k: _round(v) for k, v in vars(self).items()}
        out["tradeoff"] = _round(self.tradeoff)
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def score_grid(groups: dict[str, list[int]], lora: list, base: list, hashes=None) -> Scores:
    """The scores of one column (one checkpoint at one strength) against the base column.

    `groups` maps strong/adjacent/free to row indices; `lora` and `base` are the rows' images
    as vectors (as_vector); `hashes` optional (lora hash bits, base hash bits, training hash
    bits) for memorisation."""
    per_row = [change(x, y) for x, y in zip(lora, base, strict=True)]
    strong, adjacent, free = (groups.get(g, []) for g in ("strong", "adjacent", "free"))
    scores = Scores(
        effect=mean(per_row[i] for i in strong),
        adjacent_effect=mean(per_row[i] for i in adjacent),
        free_effect=mean(per_row[i] for i in free),
    )
    scores.bleeding = bleeding(scores.free_effect, mean(per_row[i] for i in strong + adjacent))
    scores.diversity = diversity([lora[i] for i in strong])
    scores.diversity_ratio = ratio(scores.diversity, diversity([base[i] for i in strong]))
    if hashes is not None:
        lora_bits, base_bits, training = hashes
        scores.memorisation = memorisation([lora_bits[i] for i in strong], training)
        scores.memorisation_base = memorisation([base_bits[i] for i in strong], training)
    return scores


UNDER_TRAINED_EFFECT = 0.02
"""An effect under this on strong prompts is indistinguishable from the base model."""


def best_checkpoint(named: list[tuple[str, Scores]]) -> tuple[str | None, str]:
    """The checkpoint with the highest trade-off, and a sentence saying why."""
    rated = [(name, s) for name, s in named if s.tradeoff is not None]
    if not rated:
        return None, "No checkpoint could be rated: the prompt set has no strong prompt."
    name, best = max(rated, key=lambda item: item[1].tradeoff)
    if best.effect < UNDER_TRAINED_EFFECT:
        return name, (
            f"Every checkpoint stays within {UNDER_TRAINED_EFFECT} of the base model on strong "
            "prompts: the LoRA looks under-trained (train longer or with a higher learning rate)."
        )
    strongest_name, strongest = max(rated, key=lambda item: item[1].effect)
    parts = [f"`{name}` has the best trade-off ({best.tradeoff:.3f}): effect {best.effect:.3f}"]
    if strongest_name != name:
        parts.append(f" (`{strongest_name}` changes strong prompts more, {strongest.effect:.3f}")
        parts.append(f", but {_its_cost(best, strongest)})")
    parts.append(_details(best))
    return name, "".join(parts) + "."


def _its_cost(best: Scores, other: Scores) -> str:
    """Why a checkpoint with more effect lost: the factor it pays most for."""
    costs = []
    if other.bleeding is not None and best.bleeding is not None:
        costs.append((other.bleeding - best.bleeding, f"bleeds more, {other.bleeding:.3f}"))
    if other.diversity_ratio is not None and best.diversity_ratio is not None:
        loss = best.diversity_ratio - other.diversity_ratio
        costs.append((loss, f"is less diverse, {other.diversity_ratio:.2f}x the base"))
    if other.memorisation is not None and best.memorisation is not None:
        gain = other.memorisation - best.memorisation
        costs.append((gain, f"copies training images more, {other.memorisation:.3f}"))
    worst = max(costs, default=(0.0, "scores lower overall"))
    return worst[1] if worst[0] > 0 else "scores lower overall"


def _details(s: Scores) -> str:
    out = ""
    if s.bleeding is not None:
        out += f", bleeding {s.bleeding:.3f}"
    if s.diversity_ratio is not None:
        out += f", diversity {s.diversity_ratio:.2f}x the base model's"
        if s.diversity_ratio < COLLAPSE_RATIO:
            out += " (mode collapse)"
    if s.memorisation is not None:
        out += f", memorisation {s.memorisation:.3f} (base {s.memorisation_base:.3f})"
        if s.memorisation >= NEAR_COPY:
            out += " (near-copies of training images: overfitting)"
    return out
