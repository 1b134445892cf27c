"""LoKr and DoRA recipes train natively on the tiny model (issue 18): the exported LoKr file,
re-applied by LyCORIS' own implementation, gives the trained model's outputs; the DoRA file
does so in diffusers (diffusers layout) and lorafile; `inspect` reads both back."""

from __future__ import annotations

import copy

from safetensors.torch import load_file

from interop import TOL, _diffusers_outputs, _max_diff, _outputs
from lorafile.runtime.demo import make_dataset
from lorafile.runtime.lorafiles import convert
from lorafile.runtime.lorafiles.inspect import inspect_file
from lorafile.runtime.models.sdxl import load_sdxl
from lorafile.runtime.train.loop import Trainer, TrainOptions
from lorafile.spec.models import Adapter, Log, Save
from lycoris_apply import lycoris_outputs
from train_runs import one_thread as one_thread  # autouse fixture
from train_runs import plan_for, short_train, tiny_recipe


def _train(tiny_sdxl_dir, tmp_path, adapter: Adapter):
    """Four steps at a high learning rate (so the adapter moves), fp32 files; returns the
    trainer (its models hold the trained adapter) and the exported file."""
    make_dataset(tmp_path / "data", 2, seed=5)
    recipe = tiny_recipe(
        tiny_sdxl_dir / "diffusers",
        tmp_path / "data",
        tmp_path / "out",
        adapter=adapter,
        train=short_train(steps=4, lr=1e-2, seed=2),
        save=Save(precision="fp32"),
        sample=None,
        log=Log(),
    )
    trainer = Trainer(plan_for(recipe), TrainOptions(quiet=True)).setup()
    result = trainer.train()
    return trainer, result.adapter


def test_lokr_recipe_trains_and_reproduces_with_lycoris(tiny_sdxl_dir, tmp_path):
    adapter = Adapter(algo="lokr", rank=8, alpha=4, factor=4, conv_rank=2, text_encoder=True)
    trainer, path = _train(tiny_sdxl_dir, tmp_path, adapter)
    base = load_sdxl(tiny_sdxl_dir / "diffusers")
    expected = _outputs(trainer.models)
    assert _max_diff(expected, _outputs(base)) > 1e-4  # training moved the adapter
    tensors = load_file(str(path))
    assert any(k.endswith(".lokr_w2_b") for k in tensors)  # decomposed layers
    assert any(k.endswith(".lokr_w2") for k in tensors)  # full-matrix layers (scale 1)
    assert _max_diff(expected, lycoris_outputs(base, tensors)) < TOL
    report = inspect_file(path)
    assert set(report["algorithms"]) == {"LoKr"} and set(report["ranks"]) == {"2", "8"}
    # CLIP-L's last layer feeds no SDXL output (penultimate hidden state): its w2 stays zero.
    assert all("layers_1_" in p for p in report["problems"])
    assert "lokr" in convert.read_safetensors(path)[1]["ss_network_args"]


def test_dora_recipe_trains_and_reproduces_in_diffusers(tiny_sdxl_dir, tmp_path):
    adapter = Adapter(algo="lora", rank=4, alpha=2, dora=True, text_encoder=True)
    trainer, path = _train(tiny_sdxl_dir, tmp_path, adapter)
    base = load_sdxl(tiny_sdxl_dir / "diffusers")
    expected = _outputs(trainer.models)
    assert _max_diff(expected, _outputs(base)) > 1e-4
    tensors = load_file(str(path))
    scales = {k: v for k, v in tensors.items() if k.endswith(".dora_scale")}
    assert scales and all(v.dim() == 2 and v.shape[1] == 1 for v in scales.values())
    assert set(inspect_file(path)["algorithms"]) == {"LoRA"}
    convert.convert_file(path, tmp_path / "dora-diffusers.safetensors", "diffusers")
    assert (
        _max_diff(expected, _diffusers_outputs(base, tmp_path / "dora-diffusers.safetensors")) < TOL
    )
    assert _max_diff(expected, lycoris_outputs(base, tensors)) < TOL
    back = copy.deepcopy(base)
    from lorafile.runtime.lorafiles.export import load_adapter

    load_adapter(path, back)
    assert _max_diff(expected, _outputs(back)) < TOL
