"""clip_skip on SDXL's two text encoders, against kohya's meaning and a hand computation.

kohya sd-scripts (library/sdxl_train_util.py, get_hidden_states_sdxl) feeds the UNet
hidden_states[11] of CLIP-L (12 layers, so the penultimate) and hidden_states[-2] of OpenCLIP-G,
and ignores clip_skip for SDXL. The native trainer reads `clip_skip N` as "N layers from the end,
before the final layer norm" in both encoders, so the default and `clip_skip 2` are kohya's
encoding exactly. The expected tensors are taken by hand: forward hooks record what enters and
what leaves each encoder's last transformer layer, without output_hidden_states.
"""

from __future__ import annotations

import pytest
import torch

from lorafile.runtime.train.cache import encode_prompts

CAPTIONS = ["zqx, a red circle", "a blue square"]


def by_hand(encoder, ids):
    """(penultimate hidden state, last layer's output, pooled projection) of one encoder."""
    seen = {}
    text = getattr(encoder, "text_model", encoder)  # transformers 5 dropped `text_model`
    last = text.encoder.layers[-1]

    def record_input(module, args, kwargs):
        seen["into"] = args[0] if args else kwargs["hidden_states"]

    def record_output(module, args, out):
        seen["out"] = out[0] if isinstance(out, tuple) else out

    handles = [
        last.register_forward_pre_hook(record_input, with_kwargs=True),
        last.register_forward_hook(record_output),
    ]
    try:
        with torch.no_grad():
            encoder(ids)
    finally:
        for handle in handles:
            handle.remove()
    pooled = None
    if hasattr(encoder, "text_projection"):
        # The end-of-text token's state after the final norm, projected (CLIP's text_embeds);
        # the end token has the highest id in each sequence, as in CLIP.
        normed = text.final_layer_norm(seen["out"])
        eos = ids.argmax(dim=-1)
        with torch.no_grad():
            pooled = encoder.text_projection(normed[torch.arange(ids.shape[0]), eos])
    return seen["into"], seen["out"], pooled


@pytest.fixture(scope="module")
def encoders(tiny_sdxl_dir):
    from lorafile.runtime.models.sdxl import load_sdxl

    m = load_sdxl(tiny_sdxl_dir / "diffusers")
    return (m.tokenizer, m.tokenizer_2), (m.text_encoder, m.text_encoder_2)


def _ids(tokenizer):
    return tokenizer(
        CAPTIONS,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def test_default_and_clip_skip_2_are_kohyas_penultimate_layers(encoders):
    tokenizers, text_encoders = encoders
    hand = [by_hand(e, _ids(t)) for t, e in zip(tokenizers, text_encoders, strict=True)]
    expected = torch.cat([hand[0][0], hand[1][0]], dim=-1)
    with torch.no_grad():
        default, pooled = encode_prompts(tokenizers, text_encoders, CAPTIONS)
        two, _ = encode_prompts(tokenizers, text_encoders, CAPTIONS, clip_skip=2)
    torch.testing.assert_close(default, expected, rtol=0, atol=0)
    torch.testing.assert_close(two, expected, rtol=0, atol=0)
    torch.testing.assert_close(pooled, hand[1][2], rtol=1e-6, atol=1e-6)


def test_clip_skip_1_is_the_last_layer_before_the_final_norm(encoders):
    tokenizers, text_encoders = encoders
    hand = [by_hand(e, _ids(t)) for t, e in zip(tokenizers, text_encoders, strict=True)]
    with torch.no_grad():
        one, _ = encode_prompts(tokenizers, text_encoders, CAPTIONS, clip_skip=1)
    torch.testing.assert_close(one, torch.cat([hand[0][1], hand[1][1]], dim=-1), rtol=0, atol=0)


def test_kohya_compile_and_import_agree_with_that_meaning(tmp_path):
    from lorafile.backends.base import get
    from lorafile.compiler.diagnostics import DiagnosticBag
    from lorafile.spec.models import Base, Dataset, Output, Recipe, Train

    def recipe(clip_skip):
        return Recipe(
            name="c",
            base=Base(path="/m.safetensors", clip_skip=clip_skip),
            datasets=(Dataset(path="/d"),),
            train=Train(steps=10),
            output=Output(path="/o"),
        )

    bag = DiagnosticBag()
    files = get("kohya").write(recipe(2), bag).files
    assert "clip_skip = 2" in files["config.toml"] and not bag.has_errors
    bag = DiagnosticBag()
    get("kohya").write(recipe(1), bag)
    assert [d.code for d in bag if d.is_error] == ["T517"]
    config = tmp_path / "config.toml"
    config.write_text(
        'pretrained_model_name_or_path = "/m.safetensors"\ntrain_data_dir = "/d"\n'
        'output_dir = "/o"\nmax_train_steps = 10\nclip_skip = 1\n'
    )
    bag = DiagnosticBag()
    imported = get("kohya").read(config, bag)
    assert imported.base.clip_skip is None and "I621" in [d.code for d in bag]
