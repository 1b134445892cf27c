"""LoKr and DoRA adapter files on the tiny model: the exported LoKr is the trained delta in
LyCORIS' own implementation, a DoRA file reproduces in diffusers and in lorafile, and both read
back through `inspect` and `convert` (issue 18)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from interop import TOL, _diffusers_outputs, _max_diff, _outputs
from lorafile.runtime.lorafiles import convert, export
from lorafile.runtime.lorafiles.inspect import inspect_file
from lorafile.runtime.models.tiny import build_tiny_sdxl
from lorafile.runtime.train.adapters import attach
from lycoris_apply import lycoris_outputs


@pytest.fixture(scope="module")
def base():
    return build_tiny_sdxl(seed=0)


def _settings(algo: str, **changes) -> dict:
    """The plan's resolved adapter settings (runtime/train/plan.py)."""
    return {
        "algo": algo,
        "rank": 4,
        "alpha": 6.0,
        "conv_rank": 2,
        "conv_alpha": 3.0,
        "targets": ["attention", "ff", "conv"],
        "dropout": 0.0,
        "text_encoder": False,
        "factor": None,
        "dora": False,
    } | changes


def _adapted(base, settings: dict, text: bool = False):
    """A copy of the tiny model with the trainer's adapter, its weights made random (an
    untrained adapter is zero and would hide a wrong scale)."""
    comp = copy.deepcopy(base)
    params = attach(comp.unet, settings, unet=True)
    if text:
        params += attach(comp.text_encoder, settings, unet=False)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn_like(p) * 0.2 + (p if p.dim() == 1 or p.shape[0] == 1 else 0))
    return comp


def test_lokr_file_reproduces_with_lycoris(base, tmp_path):
    """Decomposed and full-matrix LoKr layers (rank 8, factor 4 on the tiny widths), 3x3 convs
    at their own rank, alpha != rank: LyCORIS applies exactly the delta peft trained."""
    comp = _adapted(base, _settings("lokr", rank=8, factor=4), text=True)
    expected = _outputs(comp)
    assert _max_diff(expected, _outputs(base)) > 1e-2
    path = export.save_adapter(comp, tmp_path / "lokr.safetensors")
    tensors = load_file(str(path))
    suffixes = {k.split(".", 1)[1] for k in tensors}
    assert {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"} <= suffixes
    assert any(k.startswith("lora_te1_") for k in tensors)
    assert _max_diff(expected, lycoris_outputs(base, tensors)) < TOL


def test_lokr_full_matrix_layers_have_scale_one(base):
    """LyCORIS' rule: both factors full -> scale 1 whatever alpha is; else alpha / rank."""
    comp = _adapted(base, _settings("lokr", rank=8, factor=4, alpha=6.0))
    scales = {}
    for layer in comp.unet.modules():
        if hasattr(layer, "lokr_w1") and "default" in layer.r:
            full = "default" in layer.lokr_w1 and "default" in layer.lokr_w2
            scales.setdefault(full, set()).add(layer.scaling["default"])
    assert scales[True] == {1.0}
    assert scales[False] == {6.0 / 8, 3.0 / 2}


def test_lokr_inspect_and_convert(base, tmp_path):
    comp = _adapted(base, _settings("lokr", rank=8, factor=4))
    path = export.save_adapter(comp, tmp_path / "lokr.safetensors")
    report = inspect_file(path)
    assert set(report["algorithms"]) == {"LoKr"}
    assert report["layout"] == "kohya" and report["problems"] == []
    meta = convert.read_safetensors(path)[1]
    assert meta["ss_network_module"] == "lycoris.kohya" and "lokr" in meta["ss_network_args"]
    lora, _ = convert.convert_file(path, tmp_path / "again.safetensors", "kohya")
    assert {m.algo for m in lora.modules} == {"lokr"}
    a, b = load_file(str(path)), load_file(str(tmp_path / "again.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Exception, match="LoKr has no diffusers layout"):
        convert.convert_file(path, tmp_path / "d.safetensors", "diffusers")


@pytest.fixture(scope="module")
def dora(base, tmp_path_factory):
    """(adapted model, outputs, kohya file) for DoRA on LoRA + LoCon + text encoder 1."""
    comp = _adapted(base, _settings("locon", dora=True), text=True)
    path = tmp_path_factory.mktemp("dora") / "dora.safetensors"
    export.save_adapter(comp, path)
    return comp, _outputs(comp), path


def test_dora_file_layout_and_inspect(dora):
    _, _, path = dora
    tensors = load_file(str(path))
    linear = tensors["lora_unet_middle_block_1_proj_in.dora_scale"]
    down = tensors["lora_unet_middle_block_1_proj_in.lora_down.weight"]
    assert linear.shape == (tensors["lora_unet_middle_block_1_proj_in.lora_up.weight"].shape[0], 1)
    assert down.dim() == 2
    conv = tensors["lora_unet_input_blocks_1_0_in_layers_2.dora_scale"]
    assert conv.dim() == 4 and conv.shape[1:] == (1, 1, 1)  # LyCORIS wd_on_output layout
    assert any(k.startswith("lora_te1_") and k.endswith(".dora_scale") for k in tensors)
    assert set(inspect_file(path)["algorithms"]) == {"LoRA", "LoCon"}
    meta = convert.read_safetensors(path)[1]
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == {"algo": "locon", "dora_wd": "True"}


def test_dora_file_reproduces_in_lycoris_lorafile_and_diffusers(base, dora, tmp_path):
    """The kohya file in LyCORIS and lorafile; in diffusers through the diffusers layout
    (diffusers 0.42's SDXL loader drops `dora_scale` keys of kohya files with a warning)."""
    _, expected, path = dora
    assert _max_diff(expected, _outputs(base)) > 1e-2
    assert _max_diff(expected, lycoris_outputs(base, load_file(str(path)))) < TOL
    back = copy.deepcopy(base)
    export.load_adapter(path, back)
    assert _max_diff(expected, _outputs(back)) < TOL
    convert.convert_file(path, tmp_path / "d.safetensors", "diffusers")
    assert _max_diff(expected, _diffusers_outputs(base, tmp_path / "d.safetensors")) < TOL
    convert.convert_file(tmp_path / "d.safetensors", tmp_path / "k.safetensors", "kohya")
    a, b = load_file(str(path)), load_file(str(tmp_path / "k.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
