"""The native trainer's CUDA-only paths, on the tiny model (marked `gpu`; skipped without CUDA).

CI has no GPU: these run where one is (`bench/gpu.sh --tests` on the device machine). Each
feature they touch is also tested on the CPU: the compile-mode plumbing and the per-step graph
marks in tests/runtime/train/test_speed.py, the trainer's numerics in tests/test_train*.py. What only a GPU
can show is checked here: inductor's CUDA graphs record and replay through peft's layers and
the optimizer, training with them learns the same adapter as eager CUDA, pinned,
non-blocking copies of cached tensors give the same result as plain copies, and the fused LoRA
linears agree with peft's under CUDA's bf16 autocast.
"""

from __future__ import annotations

import math

import pytest
import torch

from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train.loop import Trainer, TrainOptions
from lorafile.spec.models import Cache, Save
from train_runs import plan_for, tiny_recipe

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _adapter_after_training(tiny_sdxl_dir, tmp_path, name: str, cache="disk", **options):
    from safetensors.torch import load_file

    if not (tmp_path / "data").exists():
        make_dataset(tmp_path / "data", 2, seed=5)
    recipe = tiny_recipe(tiny_sdxl_dir / "tiny_sdxl.safetensors", tmp_path / "data",
                         tmp_path / name, sample=None, save=Save())  # fmt: skip
    in_memory = Cache(latents=True, text=True, location=cache)
    recipe = recipe.model_copy(
        update={"train": recipe.train.model_copy(update={"cache": in_memory})}
    )
    trainer = Trainer(plan_for(recipe), TrainOptions(quiet=True, device="cuda", **options))
    trainer.setup()
    result = trainer.train()
    assert result.steps == 8 and math.isfinite(result.last_loss)
    return {"trainer": trainer, "weights": load_file(result.adapter)}


def test_cuda_graphs_train_the_same_adapter_as_eager_cuda(tiny_sdxl_dir, tmp_path):
    eager = _adapter_after_training(tiny_sdxl_dir, tmp_path, "eager")
    graphs = _adapter_after_training(tiny_sdxl_dir, tmp_path, "graphs", compile="reduce-overhead")
    assert graphs["trainer"].cuda_graphs is True
    assert eager["weights"].keys() == graphs["weights"].keys()
    for key, value in eager["weights"].items():
        # inductor fuses and reorders float ops: equal within float tolerance, not bitwise
        torch.testing.assert_close(graphs["weights"][key], value, rtol=2e-3, atol=2e-5)


def test_cuda_training_keeps_cached_tensors_pinned(tiny_sdxl_dir, tmp_path):
    run = _adapter_after_training(tiny_sdxl_dir, tmp_path, "pinned", cache="memory")
    trainer = run["trainer"]
    assert trainer.channels_last is True
    cached = [t for entry in trainer.text_cache.memory.values() for t in entry.values()]
    assert cached and all(t.is_pinned() for t in cached)


def test_fused_lora_linears_agree_with_peft_on_cuda_under_autocast():
    """runtime/train/fused_lora.py on the GPU's path: a bf16 base, fp32 adapter, bf16 autocast
    (the CPU tests cover fp32 and CPU autocast)."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    from lorafile.runtime.train import fused_lora

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48)).requires_grad_(False)
    config = LoraConfig(r=8, lora_alpha=4, target_modules=["0"])
    inject_adapter_in_model(config, model, adapter_name=fused_lora.ADAPTER)
    torch.nn.init.normal_(model[0].lora_B[fused_lora.ADAPTER].weight, std=0.1)
    model[0].base_layer.to("cuda", torch.bfloat16)
    model.to("cuda")
    fused = copy.deepcopy(model)
    assert fused_lora.fuse(fused) == 1
    x = torch.randn(4, 77, 64, device="cuda", requires_grad=True)
    results = []
    for m in (model, fused):
        x.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(x)
        out.float().square().sum().backward()
        grads = [p.grad.clone() for p in m.parameters() if p.requires_grad]
        results.append((out.detach(), x.grad.clone(), grads))
    (out, grad_x, grads), (fused_out, fused_grad_x, fused_grads) = results
    assert fused_out.dtype == torch.bfloat16 and fused_out.equal(out)
    torch.testing.assert_close(fused_grad_x, grad_x, rtol=2e-2, atol=1e-2)
    for mine, theirs in zip(fused_grads, grads, strict=True):
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=1e-2)
