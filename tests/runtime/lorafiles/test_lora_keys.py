"""Key maps on the real SDXL architecture (meta device, no weights) and the tiny model."""

from __future__ import annotations

from collections import Counter

import pytest

from lorafile.runtime.lorafiles import keys as lora_keys
from lorafile.runtime.lorafiles.keys import KeyMap, kohya_name, sdxl_keymap


@pytest.fixture(scope="module")
def full():
    return sdxl_keymap()


def test_full_size_counts_match_kohya(full):
    """sd-scripts logs "create LoRA for U-Net: 722 modules" and "Text Encoder: 264 modules"."""
    assert len(full.select(["attention", "ff"])) == 722
    assert len(full.select([], text_encoder=True)) == 264
    te = Counter(m.component for m in full.select([], text_encoder=True))
    assert te == {"text_encoder": 72, "text_encoder_2": 192}
    conv = full.select(["conv"])
    assert Counter(m.kind for m in conv) == {"conv3x3": 38, "linear": 17, "conv1x1": 11}


def test_every_module_maps_both_ways(full):
    chosen = full.select(["attention", "ff", "conv"], text_encoder=True)
    assert len(chosen) == 722 + 66 + 264
    kohya = [full.kohya(m.component, m.path) for m in chosen]
    assert len(set(kohya)) == len(kohya)
    for m, name in zip(chosen, kohya, strict=True):
        assert full.resolve(name) == (m.component, m.path)
        for spelling in full.names(m.component, m.path):
            assert full.resolve(spelling) == (m.component, m.path)


@pytest.mark.parametrize(
    ("component", "path", "expected"),
    [
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
        ("unet", "down_blocks.1.attentions.0.proj_in", "lora_unet_input_blocks_4_1_proj_in"),
        ("unet", "mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj",
         "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj"),
        ("unet", "up_blocks.0.attentions.0.transformer_blocks.3.attn2.to_k",
         "lora_unet_output_blocks_0_1_transformer_blocks_3_attn2_to_k"),
        ("unet", "down_blocks.0.resnets.0.conv1", "lora_unet_input_blocks_1_0_in_layers_2"),
        ("unet", "down_blocks.0.downsamplers.0.conv", "lora_unet_input_blocks_3_0_op"),
        ("unet", "up_blocks.1.upsamplers.0.conv", "lora_unet_output_blocks_5_2_conv"),
        ("unet", "up_blocks.2.resnets.2.conv_shortcut", "lora_unet_output_blocks_8_0_skip_connection"),
        ("text_encoder", "encoder.layers.0.self_attn.q_proj",
         "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"),
        ("text_encoder_2", "text_model.encoder.layers.31.mlp.fc2",
         "lora_te2_text_model_encoder_layers_31_mlp_fc2"),
    ],
)  # fmt: skip
def test_kohya_examples(full, component, path, expected):
    """The examples of kohya's naming (reference/kohya.md §5), resolved both ways."""
    assert kohya_name(component, path) == expected
    assert full.resolve(expected) == (component, lora_keys.canonical_path(component, path))


def test_te_without_text_model_prefix_is_read(full):
    """LyCORIS under transformers 5 writes `lora_te1_encoder_layers_...` (no `text_model`)."""
    assert full.resolve("lora_te1_encoder_layers_3_mlp_fc1") == (
        "text_encoder",
        "text_model.encoder.layers.3.mlp.fc1",
    )
    assert full.resolve("text_encoder.encoder.layers.3.mlp.fc1") == (
        "text_encoder",
        "text_model.encoder.layers.3.mlp.fc1",
    )


def test_tiny_names_are_sdxl_names(tiny_sdxl, full):
    """The tiny model's adaptable modules get the same kohya names as in real SDXL."""
    models = {c: getattr(tiny_sdxl, c) for c in lora_keys.COMPONENTS}
    tiny = KeyMap.from_models(models)
    for m in tiny.select(["attention", "ff", "conv"], text_encoder=True):
        name = tiny.kohya(m.component, m.path)
        assert full.resolve(name) == (m.component, m.path), name
    targets = lora_keys.peft_target_modules(models, ["attention"])
    assert "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_out.0" in targets["unet"]
    assert set(targets) == {"unet"}


def test_shipped_module_table_is_the_architecture():
    """data/sdxl/lora_modules.json (what inspect/convert use) equals the meta-device model."""
    built = lora_keys.meta_sdxl_keymap()
    assert lora_keys.module_table(built) == lora_keys.module_table(sdxl_keymap())
    assert len(built.modules) == 1059
