"""The evaluation scores against hand computations, and the prompt-set format."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.evaluate import scores as S
from lorafile.runtime.evaluate.prompts import (
    default_groups,
    parse_prompt_file,
    seeded,
    strip_trigger,
)


def test_change_is_zero_one_and_root_two_at_the_landmarks():
    a, b = np.array([3.0, 0.0]), np.array([0.0, 4.0])
    assert S.change(a, a) == 0.0
    # |a-b| = 5, sqrt(|a|^2 + |b|^2) = 5: orthogonal vectors are 1 apart whatever their norms.
    assert S.change(a, b) == pytest.approx(1.0)
    assert S.change(a, -a) == pytest.approx(math.sqrt(2))
    # |(1,2) - (1,0)| = 2; sqrt(5 + 1) = sqrt(6).
    assert S.change([1.0, 2.0], [1.0, 0.0]) == pytest.approx(2 / math.sqrt(6))
    assert S.change([0.0, 0.0], [0.0, 0.0]) == 0.0


def test_pixels_map_to_minus_one_one():
    image = np.array([[[0, 255, 127]]], dtype=np.uint8)
    assert S.as_vector(image).tolist() == pytest.approx([-1.0, 1.0, 127 / 127.5 - 1])


def test_scores_of_a_small_grid_by_hand():
    # Rows: 0, 1 strong; 2 free. Base vectors and LoRA vectors chosen so each change is known.
    base = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])]
    lora = [np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])]
    groups = {"strong": [0, 1], "adjacent": [], "free": [2]}
    s = S.score_grid(groups, lora, base)
    # row 0 changed by 1 (orthogonal), row 1 and row 2 unchanged: effect (1 + 0) / 2.
    assert s.effect == pytest.approx(0.5)
    assert s.free_effect == 0.0 and s.bleeding == 0.0
    # diversity: the two strong LoRA images are equal (0); the base pair is orthogonal (1).
    assert s.diversity == 0.0 and s.diversity_ratio == 0.0
    # trade-off: 0.5 x (1 - 0) x min(0, 1) = 0
    assert s.tradeoff == 0.0


def test_bleeding_is_free_change_over_trigger_change():
    base = [np.array([1.0, 0.0])] * 3
    lora = [np.array([0.0, 1.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0])]
    groups = {"strong": [0], "adjacent": [1], "free": [2]}
    s = S.score_grid(groups, lora, base)
    # trigger rows change by 1 and 0 (mean 0.5), the free row by 1: bleeding 2.
    assert s.bleeding == pytest.approx(2.0)
    assert S.bleeding(0.25, 0.5) == 0.5
    assert S.bleeding(0.3, 0.0) is None and S.bleeding(None, 0.5) is None
    assert s.tradeoff == 0.0  # bleeding >= 1 leaves nothing of the effect


def test_tradeoff_multiplies_its_factors():
    s = S.Scores(effect=0.8, bleeding=0.25, diversity_ratio=0.5, memorisation=0.7,
                 memorisation_base=0.6)  # fmt: skip
    assert s.tradeoff == pytest.approx(0.8 * 0.75 * 0.5 * 0.9)
    assert S.Scores(effect=0.8).tradeoff == 0.8  # missing factors count as 1
    assert S.Scores(effect=None, bleeding=0.1).tradeoff is None


def test_memorisation_is_the_nearest_training_hash():
    out = [np.array([1, 1, 0, 0], dtype=bool), np.array([0, 0, 0, 0], dtype=bool)]
    training = [np.array([1, 1, 0, 1], dtype=bool), np.array([1, 1, 1, 1], dtype=bool)]
    # output 0: 3/4 bits equal to training 0; output 1: 1/4 to training 0, 0 to training 1.
    assert S.memorisation(out, training) == pytest.approx((0.75 + 0.25) / 2)
    assert S.memorisation(out, []) is None


def test_best_checkpoint_sentence_names_the_winner_and_why():
    early = S.Scores(effect=0.4, bleeding=0.2, diversity_ratio=1.0)
    late = S.Scores(effect=0.6, bleeding=0.9, diversity_ratio=1.0)
    name, sentence = S.best_checkpoint([("step-000050", early), ("step-000100", late)])
    assert name == "step-000050"  # 0.4 x 0.8 = 0.32 beats 0.6 x 0.1 = 0.06
    assert "step-000100" in sentence and "bleeds more" in sentence and "0.320" in sentence
    weak = S.Scores(effect=0.001)
    assert "under-trained" in S.best_checkpoint([("a", weak)])[1]
    assert S.best_checkpoint([("a", S.Scores())])[0] is None


def test_prompt_file_groups_and_seeds():
    text = "# my eval set\n# strong\nzqx, a dog\n\n# adjacent\nzqx, a car\n# free\na dog\n"
    groups = parse_prompt_file(text)
    assert groups == {"strong": ["zqx, a dog"], "adjacent": ["zqx, a car"], "free": ["a dog"]}
    prompts = seeded(groups, 10)
    assert [(p.group, p.seed) for p in prompts.prompts] == [
        ("strong", 10), ("adjacent", 11), ("free", 12),
    ]  # fmt: skip
    assert prompts.of("free") == [2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a dog\n# strong\nzqx\n", "before any group header"),
        ("# strnog\nzqx, a dog\n", "Did you mean `strong`"),
        ("# strong\n\n", "holds no prompt"),
    ],
)
def test_prompt_file_errors_are_e903(text, message):
    with pytest.raises(DiagnosticError, match=message) as err:
        parse_prompt_file(text, "p.txt")
    assert err.value.diagnostics[0].code == "E903"
    assert err.value.diagnostics[0].file == "p.txt"


def test_default_prompt_set_from_trigger_and_subjects():
    assert strip_trigger("zqx, a red circle", "zqx") == "a red circle"
    assert strip_trigger("a zqx dog", "zqx") == "a dog"
    assert strip_trigger("zqxy dog", "zqx") == "zqxy dog"  # only the whole word
    groups = default_groups("zqx", ["zqx, a red circle", "a red circle", "a blue square"])
    assert groups["strong"] == ["zqx, a red circle", "zqx, a blue square"]
    assert groups["free"] == ["a red circle", "a blue square"]
    assert all(p.startswith("zqx, ") for p in groups["adjacent"]) and len(groups["adjacent"]) == 3
    assert default_groups(None, ["a dog"]) == {"strong": [], "adjacent": [], "free": ["a dog"]}
