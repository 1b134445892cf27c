"""The native trainer's speed measures, checked for their CPU behaviour (issue 7).

* Every random tensor of a step is drawn on the host and moved to the step's device (a GPU
  run used to mix a device posterior with host noise).
* The loop reads values back from the device only once per `log_every` steps, yet the NaN
  guard still names the first bad step and stops before a checkpoint is written with it.
* `--compile` compiles the UNet in place with `dynamic=False`; fused AdamW on the CPU and on CUDA.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train import data, diffusion
from lorafile.runtime.train.loop import Trainer, TrainOptions, train
from lorafile.spec.models import Interval, Save
from train_runs import bare_recipe, plan_for, tiny_recipe
from train_runs import one_thread as one_thread  # autouse fixture


def _stub_trainer(device):
    """A Trainer with only what `latents` reads: one image, no latent cache entry."""
    trainer = Trainer.__new__(Trainer)
    item = data.ImageItem("img.png", "", 64, 64, "", (64, 64), source=0)
    trainer.items, trainer.device, trainer.vae_id = [item], device, "vae"
    trainer.recipe = SimpleNamespace(datasets=[SimpleNamespace(color_aug=False)])
    trainer.latent_cache = SimpleNamespace(get=lambda key: None)
    trainer.models = SimpleNamespace(vae=None)
    return trainer


def test_latents_encoded_on_the_device_get_noise_on_the_same_device(monkeypatch):
    """The uncached path: the posterior comes from the VAE on the training device (meta here,
    standing in for cuda) and the host-drawn noise must follow it there."""
    import torch

    from lorafile.runtime.train import cache

    meta = torch.device("meta")
    monkeypatch.setattr(data, "load_pixels", lambda item, flip, hue: (torch.zeros(3, 64, 64), None))
    monkeypatch.setattr(
        cache,
        "encode_latents",
        lambda vae, pixels: (torch.zeros(1, 4, 8, 8, device=meta),) * 2,
    )
    out = Trainer.latents(_stub_trainer(meta), [data.Sample(0)], torch.Generator().manual_seed(1))
    assert out.device == meta and out.shape == (1, 4, 8, 8)


def test_cpu_latents_are_the_host_draw_of_the_step_generator(monkeypatch):
    import torch

    from lorafile.runtime.train import cache

    mean, std = torch.full((1, 4, 8, 8), 0.5), torch.full((1, 4, 8, 8), 2.0)
    monkeypatch.setattr(data, "load_pixels", lambda item, flip, hue: (torch.zeros(3, 64, 64), None))
    monkeypatch.setattr(cache, "encode_latents", lambda vae, pixels: (mean, std))
    trainer = _stub_trainer(torch.device("cpu"))
    out = Trainer.latents(trainer, [data.Sample(0)], torch.Generator().manual_seed(3))
    expected = 0.5 + 2.0 * torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, expected)
    noise = diffusion.draw_noise(out, torch.Generator().manual_seed(3))
    draw = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    assert noise.device == out.device and torch.equal(noise, draw)


def test_startup_line_says_fp32_for_precision_no():
    from lorafile.runtime.train.logging import precision_words

    assert precision_words("no") == "fp32 (mixed precision off)"
    assert precision_words("bf16") == "bf16 mixed precision"


def test_fused_adamw_for_floating_point_parameters_on_one_device_type():
    import torch

    from lorafile.runtime.train.optim import adamw_implementation, build_optimizer

    def fake(device: str, floating: bool = True):
        return SimpleNamespace(device=torch.device(device), is_floating_point=lambda: floating)

    assert adamw_implementation([{"params": [fake("cuda"), fake("cuda")]}]) == {"fused": True}
    assert adamw_implementation([{"params": [fake("cpu")]}]) == {"fused": True}
    assert adamw_implementation([{"params": [fake("cuda")]}, {"params": [fake("cpu")]}]) == {}
    assert adamw_implementation([{"params": [fake("cpu", floating=False)]}]) == {}
    assert adamw_implementation([{"params": [fake("mps")]}]) == {}
    opt = build_optimizer("adamw", [{"params": [torch.nn.Parameter(torch.ones(2))]}], {})
    assert opt.defaults["fused"]
    loop = build_optimizer("adamw", [{"params": [torch.nn.Parameter(torch.ones(2))]}],
                           {"fused": False})  # fmt: skip
    assert not loop.defaults["fused"]  # the recipe's optimizer_args win


def test_fused_cpu_adamw_updates_as_the_per_tensor_loop():
    """The fused CPU kernel is the same AdamW: ten steps on random gradients end within float
    rounding of torch's per-tensor loop."""
    import torch

    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(64, 4, generator=gen), torch.randn(7, generator=gen)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(10)]
    ends = []
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, fused=fused)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        ends.append(params)
    for fused_p, loop_p, first in zip(*ends, start, strict=True):
        assert not torch.equal(fused_p, first)
        torch.testing.assert_close(fused_p, loop_p, rtol=1e-6, atol=1e-7)


class _SyncCounter:
    """Counts tensor-to-host reads (`.item()`, `.tolist()`, `float()`, `bool()`) made by
    lorafile's own runtime code: each is a GPU synchronisation when the tensor is on CUDA."""

    NAMES = ("item", "tolist", "__float__", "__bool__", "__int__")

    def __init__(self, monkeypatch):
        import torch

        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if f"lorafile{Path('/').as_posix()}runtime" in Path(caller).as_posix():
                self.calls.append(f"{name} in {Path(caller).name}")
            return original(tensor, *args, **kwargs)

        return counted


@pytest.fixture
def dynamo_limits():
    """torch's own recompile limits during the test, put back after it (compile raises them)."""
    import torch

    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        yield


def test_loop_syncs_once_per_log_interval_and_compiles_in_place(
    tiny_sdxl_dir, tmp_path, monkeypatch, dynamo_limits
):
    import torch

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((self, kw)))
    make_dataset(tmp_path / "data", 2, seed=5)
    recipe = bare_recipe(tiny_sdxl_dir, tmp_path)
    trainer = Trainer(plan_for(recipe), TrainOptions(quiet=True, log_every=4, compile=True))
    trainer.setup()
    counter = _SyncCounter(monkeypatch)
    result = trainer.train()
    assert result.steps == 8 and math.isfinite(result.last_loss)
    # 8 steps, log_every 4: one read-back at step 4 and one at step 8, whatever the step count.
    assert counter.calls == ["tolist in loop.py"] * 2
    # The default scope compiles each repeated transformer block, not the UNet: every one.
    blocks = [
        m for m in trainer.models.unet.modules() if type(m).__name__ == "BasicTransformerBlock"
    ]
    assert [m for m, _ in compiled] == blocks and len(blocks) > 1
    assert {str(kw) for _, kw in compiled} == {str({"dynamic": False})}
    assert trainer.cuda_graphs is False  # the default mode records no CUDA graphs
    assert trainer.static is not None  # ... so the trainer's static step keeps running them
    # Every bucket shape and sampling's two batches, with and without gradients, at a few block
    # widths, compile without hitting the limit (past it, dynamo would run a block eagerly).
    buckets = len({i.bucket for i in trainer.items})
    assert torch._dynamo.config.recompile_limit >= (buckets + 2) * 2 * 4


def test_compile_scope_unet_compiles_the_whole_unet_and_reaches_the_workers(
    tiny_sdxl_dir, tmp_path, monkeypatch, dynamo_limits
):
    import torch

    from lorafile.cli import build_parser
    from lorafile.runtime.train import launch

    args = build_parser().parse_args(["train", "r.recipe", "--compile-scope", "unet"])
    worker = launch.worker_args(args)
    assert worker[worker.index("--compile-scope") + 1] == "unet"
    with pytest.raises(SystemExit):  # argparse refuses a scope that does not exist
        build_parser().parse_args(["train", "r.recipe", "--compile-scope", "vae"])
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(self))
    make_dataset(tmp_path / "data", 2, seed=5)
    recipe = bare_recipe(tiny_sdxl_dir, tmp_path)
    options = TrainOptions(quiet=True, compile=True, compile_scope="unet")
    trainer = Trainer(plan_for(recipe), options).setup()
    assert compiled == [trainer.models.unet]
    with pytest.raises(ValueError, match=r"unknown compile scope"):
        diffusion.compile_unet(trainer.models.unet, 1, "default", "vae")


def test_compile_mode_reaches_torch_compile_and_cuda_graphs_only_on_cuda(
    tiny_sdxl_dir, tmp_path, monkeypatch, dynamo_limits
):
    """`--compile-mode reduce-overhead` (CUDA graphs) from the command line to
    `Module.compile`, through the DDP worker arguments too; on a CPU no step is marked."""
    import torch

    from lorafile.cli import build_parser
    from lorafile.runtime.train import launch

    args = build_parser().parse_args(["train", "r.recipe", "--compile-mode", "reduce-overhead"])
    worker = launch.worker_args(args)
    assert worker[worker.index("--compile-mode") + 1] == "reduce-overhead"
    with pytest.raises(SystemExit):  # argparse refuses a mode torch.compile does not have
        build_parser().parse_args(["train", "r.recipe", "--compile-mode", "fast"])
    compiled, marks = [], []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(kw))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    make_dataset(tmp_path / "data", 2, seed=5)
    recipe = tiny_recipe(tiny_sdxl_dir / "tiny_sdxl.safetensors", tmp_path / "data",
                         tmp_path / "out", sample=None, save=Save())  # fmt: skip
    trainer = Trainer(plan_for(recipe), TrainOptions(quiet=True, compile="reduce-overhead"))
    trainer.setup()
    assert compiled and all(kw == {"dynamic": False, "mode": "reduce-overhead"} for kw in compiled)
    assert trainer.cuda_graphs is False  # CPU: inductor records no CUDA graphs
    assert trainer.static is None  # torch records its own graphs: the trainer's stand aside
    trainer.loss_step(0, 0, [data.Sample(0)])
    assert marks == []
    trainer.cuda_graphs = True  # as on a GPU: every micro-batch starts a new graph iteration
    trainer.loss_step(0, 0, [data.Sample(0)])
    assert marks == [1]
    with pytest.raises(ValueError, match=r"unknown torch\.compile mode"):
        diffusion.compile_unet(trainer.models.unet, 1, "fast")


def test_nan_guard_names_the_first_bad_step_and_never_saves_it(
    tiny_sdxl_dir, tmp_path, monkeypatch
):
    """The loss turns NaN at step 5; the guard is read only at step 6 (before that step's
    checkpoint): the error names step 5 and the last good checkpoint, step 3."""
    original = Trainer.micro_step  # both step forms (eager and static buffers) go through it

    def poisoned(self, epoch, index, batch):
        loss = original(self, epoch, index, batch)
        return loss * math.nan if self.step + 1 >= 5 else loss

    monkeypatch.setattr(Trainer, "micro_step", poisoned)
    make_dataset(tmp_path / "data", 2, seed=6)
    recipe = tiny_recipe(
        tiny_sdxl_dir / "tiny_sdxl.safetensors",
        tmp_path / "data",
        tmp_path / "out",
        sample=None,
        save=Save(every=Interval(every=3)),
    )
    with pytest.raises(DiagnosticError, match="T573") as err:
        train(plan_for(recipe), TrainOptions(quiet=True, log_every=100))
    text = str(err.value)
    assert "loss became nan at step 5" in text and "step-000003" in text
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert checkpoints == ["step-000003"]
    assert not (tmp_path / "out" / "tiny.safetensors").exists()


def test_a_disk_cache_is_filled_by_one_process_per_machine(tmp_path):
    """DDP: the first process of a machine fills a disk cache; the others only wait at the
    barrier and then read its files (no per-rank encoding, no racing writes)."""
    from lorafile.runtime.train.cache import TensorCache, fill_once

    events = []

    def accelerator(local_main: bool):
        return SimpleNamespace(
            num_processes=2,
            is_local_main_process=local_main,
            is_main_process=local_main,
            wait_for_everyone=lambda: events.append("barrier"),
        )

    disk = TensorCache(tmp_path / "latents")
    fill_once(disk, lambda: events.append("fill"), accelerator(True))
    fill_once(disk, lambda: events.append("fill"), accelerator(False))
    assert events == ["fill", "barrier", "barrier"]
    events.clear()
    fill_once(TensorCache(), lambda: events.append("fill"), None)  # one process
    assert events == ["fill"]
