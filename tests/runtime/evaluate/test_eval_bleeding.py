"""Bleeding on a tiny model that listens to its prompt (issue 16's acceptance test): a LoRA
trained with the trigger in its captions bleeds less than one trained on the same images
without it.

The model is tests/listening_model.py's (conftest `listening_sdxl`): the tiny SDXL with a
deterministic, unit-scaled VAE and a UNet taught to draw "a red circle", "a blue square", ...
On the plain tiny model this comparison means nothing (docs/eval.md, "Limits"). The concept is
magenta stripes behind every subject. `trigger`: captions "zqx, a red circle", ..., with the
plain subjects as regularization images (prior preservation: the recipe's `regularization`
block, what a user does against bleeding). `plain`: the same images and captions without the
trigger, and without regularization images (theirs would be the training captions with the
opposite picture). bench/bleeding.py prints these figures for more seeds and base models.
"""

from __future__ import annotations

import pytest

import listening_model as lm
from train_runs import one_thread as one_thread  # autouse fixture

SEED = 7
"""The LoRAs' training seed and the prompt seed of their evaluation."""


@pytest.fixture(scope="module")
def scores(listening_sdxl, tmp_path_factory):
    """report.json's scores at strength 1, per run and checkpoint."""
    import torch

    torch.set_num_threads(1)
    root = lm.write_concept(tmp_path_factory.mktemp("bleeding"))
    out = {}
    for name, trigger, regularize in (("trigger", lm.TRIGGER, True), ("plain", None, False)):
        lm.train_concept(listening_sdxl, root, name, trigger, SEED, regularize)
        out[name] = lm.bleeding_of(root / name, root / f"E-{name}", root / "prompts.txt", SEED)
    return out


def test_the_listening_model_depends_on_its_prompt_more_than_the_plain_one(
    listening_sdxl, tiny_sdxl
):
    import torch

    from lorafile.runtime.models.sdxl import load_sdxl

    listening = load_sdxl(listening_sdxl)
    assert listening.vae.quant_conv.bias[4:].eq(lm.LOGVAR_FLOOR).all()  # no posterior noise
    latents, _, _ = lm.subject_batch(listening)
    assert abs(float(latents.std()) - 1.0) < 1e-3  # the scaling factor makes them unit-std

    pairs = (("a red circle", "a blue square"), ("a yellow triangle", "a black circle"))
    for module in (tiny_sdxl.unet, tiny_sdxl.text_encoder, tiny_sdxl.text_encoder_2):
        module.eval()
    with torch.no_grad():
        plain = [lm.prompt_change(tiny_sdxl, a, b) for a, b in pairs]
        taught = [lm.prompt_change(listening, a, b) for a, b in pairs]
    assert sum(taught) > 1.5 * sum(plain), (taught, plain)


def test_a_lora_trained_with_its_trigger_bleeds_less_than_one_trained_without(scores):
    """At both checkpoints (step 60 and the final 120), and by 0.1 at the end: bench/bleeding.py
    measured the trigger run 0.09-0.42 lower at step 60 and 0.24-0.57 lower at the end, in 12
    comparisons out of 12 (3 base models x seeds 7-9, and seeds 10-12 on base model 0; this
    test is base 0, seed 7: 0.883 against 1.024, then 0.631 against 0.999)."""
    assert scores["trigger"].keys() == scores["plain"].keys() == {"step-000060", "final"}
    for checkpoint in ("step-000060", "final"):
        trigger, plain = scores["trigger"][checkpoint], scores["plain"][checkpoint]
        assert trigger["effect"] > 0.1 and plain["effect"] > 0.1, (checkpoint, trigger, plain)
        assert trigger["bleeding"] < plain["bleeding"], (checkpoint, trigger, plain)
    assert scores["trigger"]["final"]["bleeding"] < scores["plain"]["final"]["bleeding"] - 0.1
