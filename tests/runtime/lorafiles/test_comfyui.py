"""The ComfyUI workflow uses ComfyUI's node and input names: checked against
tests/fixtures/comfyui_nodes.json, written by hand from ComfyUI's nodes.py (INPUT_TYPES
'required' and RETURN_TYPES) and comfy/samplers.py; links point at outputs of the right type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafile.runtime.lorafiles.comfyui import SAMPLERS, settings_from_plan, workflow
from lorafile.spec.models import SAMPLERS as RECIPE_SAMPLERS

NODES = json.loads((Path(__file__).parents[2] / "fixtures" / "comfyui_nodes.json").read_text())
WIDGET_TYPES = {"INT": (int,), "FLOAT": (int, float), "STRING": (str,), "FILE": (str,)}

PLAN = {
    "base": "/models/sd_xl_base_1.0.safetensors",
    "recipe": {
        "trigger": "wtrclr",
        "datasets": [{"resolution": {"width": 832, "height": 1216}}],
        "train": {"seed": 42},
    },
    "sample": {
        "sampler": "euler_a",
        "steps": 28,
        "cfg": 6.5,
        "seed": 7,
        "negative": "blurry",
        "prompts": ["a lighthouse", "wtrclr a lighthouse at dusk"],
    },
}


@pytest.fixture
def flow():
    return workflow(settings_from_plan(PLAN, "watercolor_v1.safetensors", strength=0.8))


def _check_input(node_id: str, name: str, value, expected, flow: dict) -> None:
    if isinstance(expected, list):  # a COMBO: one of ComfyUI's own strings
        assert value in expected, f"{node_id}.{name}: {value!r} is not one of ComfyUI's choices"
    elif expected in WIDGET_TYPES:
        assert isinstance(value, WIDGET_TYPES[expected]) and not isinstance(value, bool), (
            node_id,
            name,
        )
    else:  # a typed connection: [source node id, output index] of that type
        assert isinstance(value, list) and len(value) == 2, f"{node_id}.{name} must be a link"
        source, index = value
        produced = NODES[flow[source]["class_type"]]["return_types"]
        assert 0 <= index < len(produced) and produced[index] == expected, (node_id, name, value)


def test_nodes_and_inputs_are_comfyuis(flow):
    assert sorted(n["class_type"] for n in flow.values()) == sorted(
        ["CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "CLIPTextEncode",
         "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"]
    )  # fmt: skip
    for node_id, node in flow.items():
        spec = NODES[node["class_type"]]
        assert set(node["inputs"]) == set(spec["required"]), node["class_type"]
        for name, value in node["inputs"].items():
            _check_input(node_id, name, value, spec["required"][name], flow)
        assert isinstance(node["_meta"]["title"], str)
    json.dumps(flow)  # API format is plain JSON


def test_graph_is_wired_as_a_lora_render(flow):
    by_type = {}
    for node_id, node in flow.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    (lora,) = by_type["LoraLoader"]
    (sampler,) = by_type["KSampler"]
    assert flow[sampler]["inputs"]["model"] == [lora, 0]  # the UNet goes through the LoRA
    for enc in by_type["CLIPTextEncode"]:
        assert flow[enc]["inputs"]["clip"] == [lora, 1]  # and so do the text encoders
    positive = flow[flow[sampler]["inputs"]["positive"][0]]["inputs"]["text"]
    negative = flow[flow[sampler]["inputs"]["negative"][0]]["inputs"]["text"]
    assert positive == "wtrclr a lighthouse at dusk" and negative == "blurry"
    latent = flow[by_type["EmptyLatentImage"][0]]["inputs"]
    assert (latent["width"], latent["height"]) == (832, 1216)  # the training resolution
    assert flow[lora]["inputs"]["lora_name"] == "watercolor_v1.safetensors"
    assert flow[lora]["inputs"]["strength_model"] == 0.8
    assert (
        flow[by_type["CheckpointLoaderSimple"][0]]["inputs"]["ckpt_name"]
        == "sd_xl_base_1.0.safetensors"
    )
    assert flow[sampler]["inputs"]["sampler_name"] == "euler_ancestral"


def test_every_recipe_sampler_has_a_comfyui_equivalent():
    choices = NODES["KSampler"]["required"]
    assert set(SAMPLERS) == set(RECIPE_SAMPLERS)
    for sampler, scheduler in SAMPLERS.values():
        assert sampler in choices["sampler_name"] and scheduler in choices["scheduler"]


def test_without_a_sample_block_the_trigger_leads():
    settings = settings_from_plan({"recipe": {"trigger": "zqx"}}, "x.safetensors")
    assert settings.positive.startswith("zqx") and (settings.width, settings.height) == (1024, 1024)
