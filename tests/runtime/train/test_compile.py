"""`lorafile train --compile` with a real torch.compile (inductor, on the CPU): its default
scope compiles the tiny UNet's repeated transformer blocks, the trainer's static step runs
them, and the run trains what the eager step trains, within float rounding (inductor fuses
ops, so the last bits differ). The wiring without a compiler: tests/runtime/train/test_speed.py.
"""

from __future__ import annotations

import pytest

from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train.loop import Trainer, TrainOptions
from lorafile.spec.models import Adapter
from train_runs import bare_recipe, plan_for, short_train, train_adapter
from train_runs import one_thread as one_thread  # autouse fixture


def test_compiled_blocks_train_what_the_eager_step_trains(tiny_sdxl_dir, tmp_path):
    import torch

    make_dataset(tmp_path / "data", 1, seed=5)  # one image: one bucket shape to compile
    recipe = bare_recipe(
        tiny_sdxl_dir,
        tmp_path,
        adapter=Adapter(rank=4, dropout=0.0),  # inductor draws its own dropout masks
        # SGD keeps the comparison linear in the gradients (Adam magnifies last-bit
        # differences of near-zero gradients); checkpointing recomputes the compiled blocks.
        train=short_train(steps=3, optimizer="sgd", lr=0.5, checkpointing=True),
    )
    from torch._dynamo.utils import counters

    counters.clear()
    compiled, compiled_adapter = train_adapter(recipe, tmp_path / "compiled", compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo compiled, nothing fell back
    blocks = [
        m for m in compiled.models.unet.modules() if type(m).__name__ == "BasicTransformerBlock"
    ]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert compiled.static is not None  # the static step runs the compiled blocks
    eager, eager_adapter = train_adapter(recipe, tmp_path / "eager", graphs=False)
    assert eager.models.unet is not compiled.models.unet and eager.static is None

    assert compiled_adapter.keys() == eager_adapter.keys()
    # lora_up starts at zero, so its value is what the three steps changed.
    ups = sorted(k for k in eager_adapter if "lora_up" in k)
    trained = torch.cat([compiled_adapter[k].flatten() for k in ups])
    reference = torch.cat([eager_adapter[k].flatten() for k in ups])
    change = float(reference.norm())
    assert ups and change > 0
    # 3 SGD steps at lr 0.5 in fp32: the two runs differed by 1.6e-5 of the change; a wrong
    # gradient, or a block that missed an update, differs by the order of the change itself.
    assert float((trained - reference).norm()) <= 1e-2 * change


@pytest.fixture
def no_cpp_compiler():
    """Inductor looks for a C++ compiler by a name no machine has."""
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, "no-such-cxx-compiler")}):
        yield


def test_no_compiler_for_the_device_is_t585_and_the_run_goes_on_uncompiled(
    tiny_sdxl_dir, tmp_path, capsys, no_cpp_compiler
):
    make_dataset(tmp_path / "data", 1, seed=5)
    recipe = bare_recipe(tiny_sdxl_dir, tmp_path, train=short_train(steps=2))
    trainer, _ = train_adapter(recipe, tmp_path / "out", compile=True)
    out = capsys.readouterr().out
    assert "warning[T585]" in out and "no-such-cxx-compiler" in out and "set CXX" in out
    assert trainer.compile_mode is None
    assert all(m._compiled_call_impl is None for m in trainer.models.unet.modules())


def test_a_compiler_failure_during_the_run_is_t586_in_run_json(
    tiny_sdxl_dir, tmp_path, monkeypatch
):
    """Past the check, the compiler fails on this code (a backend that raises, as inductor
    does on an op it cannot build): the run stops at the first step with T586 saying how to
    go on, and run.json records it."""
    import json

    from lorafile.compiler.diagnostics import DiagnosticError
    from lorafile.runtime.train import diffusion

    def failing_backend(graph, example_inputs):
        raise RuntimeError("cannot build this kernel\n(a long compiler log)")

    def compile_unet(unet, buckets, mode, scope):
        unet.compile_repeated_blocks(dynamic=False, backend=failing_backend)
        return False

    monkeypatch.setattr(diffusion, "compile_unet", compile_unet)
    make_dataset(tmp_path / "data", 1, seed=5)
    recipe = bare_recipe(tiny_sdxl_dir, tmp_path, train=short_train(steps=2))
    options = TrainOptions(out=tmp_path / "out", quiet=True, compile=True)
    trainer = Trainer(plan_for(recipe), options).setup()
    with pytest.raises(DiagnosticError) as caught:
        trainer.train()
    found = caught.value.diagnostics[0]
    assert found.code == "T586" and "at step 1:" in found.message
    assert "RuntimeError: cannot build this kernel" in found.message
    assert "compiler log" not in found.message  # the first line only
    assert "without --compile" in found.help
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"]["code"] == "T586"
