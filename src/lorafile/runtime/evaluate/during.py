"""Scores during training: the recipe's `sample` block, scored at each sample and logged.

When the trainer draws its samples (every `sample every N` steps) and logs to TensorBoard, the
samples' prompts are split by the trigger (with it: strong; without: free) and scored against
the base model's images of the same prompts and seeds, rendered once with the adapter switched
off (the first time samples are drawn). Logged as `eval/effect`, `eval/bleeding`,
`eval/diversity` (ratio to the base) and `eval/memorisation`, at the step of the samples; a
score that cannot be measured (no trigger-free prompt, fewer than two trigger prompts) is not
logged. The formulas are `lorafile eval`'s (scores.py, docs/eval.md).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from lorafile.runtime.evaluate import scores as S

TAGS = {
    "effect": "eval/effect",
    "bleeding": "eval/bleeding",
    "diversity_ratio": "eval/diversity",
    "memorisation": "eval/memorisation",
}


def split_by_trigger(prompts: list[str], trigger: str | None) -> dict[str, list[int]]:
    """Rows with the trigger word are strong, the others free (no trigger: all strong)."""
    if not trigger:
        return {"strong": list(range(len(prompts))), "free": []}
    has = [bool(re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", p)) for p in prompts]
    return {
        "strong": [i for i, h in enumerate(has) if h],
        "free": [i for i, h in enumerate(has) if not h],
    }


def read_images(paths: list[Path]) -> list:
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


class SampleScorer:
    """Holds the base images and training hashes between samples of one run."""

    def __init__(self, log_dir: Path, sample: dict, trigger: str | None, training: list[Path]):
        self.log_dir, self.sample, self.training_paths = log_dir, sample, training
        self.groups = split_by_trigger(list(sample["prompts"]), trigger)
        self.base: list | None = None
        self.training: list | None = None

    def score(self, models, paths: list[Path], step: int, device, autocast=None) -> S.Scores:
        """Score the samples in `paths` (drawn with the adapter on) and log the scalars."""
        from lorafile.runtime.evaluate.runner import hash_images, hash_pil

        if self.base is None:
            self.base = self._render_base(models, device, autocast)
        if self.training is None:
            self.training = hash_images(self.training_paths)
        images = read_images(paths)
        hashes = (hash_pil(images), hash_pil(self.base), self.training) if self.training else None
        scores = S.score_grid(
            self.groups,
            [S.as_vector(im) for im in images],
            [S.as_vector(im) for im in self.base],
            hashes,
        )
        self._log(scores, step)
        return scores

    def _render_base(self, models, device, autocast) -> list:
        """The sample prompts with the adapter off: the base model's images, same seeds."""
        from lorafile.runtime.evaluate.render import StrengthSwitch
        from lorafile.runtime.train.sampling import sample_images

        switch = StrengthSwitch(models, name="default")
        switch.set(0.0)
        try:
            with tempfile.TemporaryDirectory() as folder:
                paths = sample_images(models, self.sample, Path(folder), device, autocast)
                return read_images(paths)
        finally:
            switch.set(1.0)

    def _log(self, scores: S.Scores, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        values = {tag: getattr(scores, key) for key, tag in TAGS.items()}
        values = {tag: v for tag, v in values.items() if v is not None}
        if not values:
            return
        writer = SummaryWriter(str(self.log_dir))
        try:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
        finally:
            writer.close()
