"""The native trainer end to end on the tiny model: outputs, TensorBoard, samples, guards."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.demo import make_dataset
from lorafile.runtime.train.loop import TrainOptions, prepare_output, train
from lorafile.spec.models import (
    Adapter,
    Base,
    Dataset,
    Interval,
    Log,
    Regularization,
    Resolution,
    Sample,
    Save,
    Train,
)
from train_runs import one_thread as one_thread  # autouse fixture
from train_runs import plan_for, short_train, tiny_recipe

TAGS = {"train/loss", "train/lr", "train/grad_norm", "perf/images_per_s", "memory/peak_gib"}


@pytest.fixture(scope="module")
def run(tiny_sdxl_dir, tmp_path_factory):
    """One short run (kohya output) with a corrupt image in the dataset."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train")
    make_dataset(root / "data", 6, seed=1)
    make_dataset(root / "reg", 2, seed=9)
    (root / "data" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    reg = Regularization(path=str(root / "reg"), class_prompt="a shape", ratio=0.5, weight=0.5)
    recipe = tiny_recipe(
        tiny_sdxl_dir / "tiny_sdxl.safetensors", root / "data", root / "out", regularization=(reg,)
    )
    plan = plan_for(recipe)
    result = train(plan, TrainOptions(quiet=True))
    return recipe, plan, result


def test_run_writes_adapter_checkpoints_and_run_file(run):
    _, plan, result = run
    out = result.out
    assert result.steps == 8 and result.adapter == out / "tiny.safetensors"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-000006").iterdir()) == [
        "adapter.safetensors",
        "state.pt",
        "tiny-step000006.safetensors",
    ]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["seed"] == 3 and info["step"] == 8
    assert [s["path"].endswith("zz_corrupt.png") for s in plan["datasets"][0]["skipped"]] == [True]


def test_adapter_file_is_kohya_with_metadata(run):
    from safetensors import safe_open

    _, _, result = run
    with safe_open(result.adapter, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith(".alpha") for k in keys)
    assert (
        meta["ss_network_dim"] == "4"
        and meta["ss_max_train_steps"] == "8"
        and meta["ss_seed"] == "3"
    )
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_tensorboard_events_read_back(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, result = run
    events = EventAccumulator(str(result.log_dir))
    events.Reload()
    assert set(events.Tags()["scalars"]) >= TAGS
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))


def test_samples_exist_and_decode(run):
    _, _, result = run
    folders = sorted(p.name for p in (result.out / "samples").iterdir())
    assert folders == ["step-000004", "step-000008"]
    for folder in folders:
        for name, size in (("00.png", (64, 64)), ("01.png", (64, 64)), ("grid.png", (128, 64))):
            with Image.open(result.out / "samples" / folder / name) as image:
                image.load()
                assert image.size == size


def test_saved_adapter_loads_in_diffusers_and_changes_output(run, tiny_sdxl_dir):
    import torch
    from diffusers import StableDiffusionXLPipeline

    _, _, result = run
    pipe = StableDiffusionXLPipeline.from_pretrained(
        tiny_sdxl_dir / "diffusers", local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)

    def image():
        g = torch.Generator().manual_seed(0)
        return pipe(
            "zqx, a red circle",
            num_inference_steps=2,
            width=64,
            height=64,
            generator=g,
            output_type="np",
        ).images

    before = image()
    pipe.load_lora_weights(str(result.adapter))
    after = image()
    assert abs(after - before).max() > 1e-3


def test_occupied_output_folder_is_refused(run):
    _, plan, result = run
    with pytest.raises(DiagnosticError, match="T571") as err:
        train(plan, TrainOptions(quiet=True))
    assert "--resume" in str(err.value) and "--force" in str(err.value)
    assert (result.out / "tiny.safetensors").is_file()  # untouched


def test_force_clears_run_outputs_but_keeps_caches(tmp_path):
    for name in ("checkpoints/step-000001", "samples/step-000001", "logs", "cache/latents"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "run.json").write_text("{}")
    assert prepare_output(tmp_path, TrainOptions(force=True)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    with pytest.raises(DiagnosticError, match="T572"):
        prepare_output(tmp_path, TrainOptions(resume=True))
    chosen = tmp_path / "checkpoints" / "step-000004"
    chosen.mkdir(parents=True)
    (chosen / "state.pt").write_bytes(b"")
    assert prepare_output(tmp_path, TrainOptions(resume=True)) == chosen
    assert prepare_output(tmp_path, TrainOptions(resume=chosen)) == chosen


def test_nan_loss_stops_with_step_and_causes(tiny_sdxl_dir, tmp_path):
    import torch

    from lorafile.runtime.models.sdxl import load_sdxl

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sdxl_dir / "diffusers", broken)
    model = load_sdxl(broken, parts=("unet",))
    with torch.no_grad():
        model.unet.conv_out.bias.fill_(float("nan"))
    model.unet.save_pretrained(broken / "unet")
    make_dataset(tmp_path / "data", 2, seed=2)
    recipe = tiny_recipe(broken, tmp_path / "data", tmp_path / "out", sample=None)
    with pytest.raises(DiagnosticError, match="T573") as err:
        train(plan_for(recipe), TrainOptions(quiet=True))
    text = str(err.value)
    assert "at step 1" in text and "learning rate" in text and "no checkpoint was saved yet" in text
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def test_pickle_base_model_is_refused(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"not loaded")
    make_dataset(tmp_path / "data", 1, seed=2)
    recipe = tiny_recipe(tmp_path / "model.ckpt", tmp_path / "data", tmp_path / "out")
    with pytest.raises(DiagnosticError, match="pickle") as err:
        train(plan_for(recipe), TrainOptions(quiet=True))
    assert "--allow-pickle" in str(err.value)


def test_loha_text_encoders_color_aug_trains_and_exports(tiny_sdxl_dir, tmp_path):
    from safetensors import safe_open

    make_dataset(tmp_path / "data", 2, seed=5)
    recipe = tiny_recipe(
        tiny_sdxl_dir / "diffusers",
        tmp_path / "data",
        tmp_path / "out",
        datasets=(
            Dataset(
                path=str(tmp_path / "data"),
                resolution=Resolution(width=64, height=64),
                color_aug=True,
            ),
        ),
        adapter=Adapter(algo="loha", rank=2, text_encoder=True),
        train=Train(
            steps=2, lr=1e-3, optimizer="adamw", precision="no", checkpointing=True, seed=1
        ),
        save=Save(),
        sample=None,
        log=Log(),
    )
    plan = plan_for(recipe)
    assert plan["memory"]["cache_text"] is False
    assert plan["memory"]["cache_latents"] is False  # color augmentation: pixels change each step
    result = train(plan, TrainOptions(quiet=True))
    with safe_open(result.adapter, "pt") as f:
        keys = list(f.keys())
    assert any(".hada_w1_a" in k for k in keys)
    assert any(k.startswith("lora_te1_text_model_encoder") for k in keys)
    assert any(k.startswith("lora_te2_") for k in keys)
    assert any("_resnets_" in k or "_in_layers_" in k or "_out_layers_" in k for k in keys)  # conv


def test_bf16_with_memory_measures_trains_and_samples(tiny_sdxl_dir, tmp_path, capsys):
    """bf16 autocast, gradient checkpointing, 8-bit AdamW, min-SNR, noise offset, v-prediction."""
    make_dataset(tmp_path / "data", 2, seed=6)
    recipe = tiny_recipe(
        tiny_sdxl_dir / "diffusers",
        tmp_path / "data",
        tmp_path / "out",
        base=Base(path=str(tiny_sdxl_dir / "diffusers"), prediction="v"),
        train=short_train(
            steps=3,
            optimizer="adamw8bit",
            precision="bf16",
            checkpointing=True,
            min_snr_gamma=5.0,
            noise_offset=0.05,
        ),
        save=Save(layout="diffusers"),
        sample=Sample(
            every=Interval(every=3), steps=2, size=Resolution(width=64, height=64), prompts=("zqx",)
        ),
    )
    result = train(plan_for(recipe), TrainOptions(quiet=True))
    assert result.steps == 3 and result.last_loss == result.last_loss  # finite, not NaN
    startup = next(
        line for line in capsys.readouterr().out.splitlines() if "effective batch" in line
    )
    assert startup.startswith(
        "lorafile: 2 images in 1 buckets, 3 steps (2/epoch), effective batch 1"
    )
    assert "bf16 mixed precision on cpu" in startup and "VRAM estimate" in startup
    with Image.open(result.samples[-1]) as image:
        assert image.size == (64, 64)


def test_interrupted_checkpoint_write_is_never_picked(tmp_path):
    import torch

    from lorafile.runtime.train import checkpoint as ckpt

    def export(folder):
        (folder / "tiny-step.safetensors").write_bytes(b"x")

    adapter = {"unet.a.lora_A.weight": torch.ones(2, 2)}
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, step, adapter, {"step": step}, export, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    (tmp_path / "checkpoints" / ".step-000008.tmp").mkdir()  # a save killed half-way
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000006"
    weights, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert state == {"step": 6} and weights["unet.a.lora_A.weight"].equal(
        adapter["unet.a.lora_A.weight"]
    )


def test_logs_follow_the_output_folder_unless_the_recipe_names_one(tmp_path):
    """`-o elsewhere` writes TensorBoard events to elsewhere/logs, not into the recipe's own
    output folder (where an earlier run's events are); an explicit `log ... path` is kept."""
    from lorafile.runtime.train.loop import Trainer
    from lorafile.spec.models import Log

    make_dataset(tmp_path / "data", 2, seed=1)
    recipe = tiny_recipe(tmp_path / "base.safetensors", tmp_path / "data", tmp_path / "out")
    trainer = Trainer(plan_for(recipe), TrainOptions(out=tmp_path / "elsewhere"))
    trainer.writes = True  # rank 0, as setup() finds it
    assert trainer._log_dir() == (tmp_path / "elsewhere" / "logs").resolve()
    named = recipe.model_copy(update={"log": Log(to="tensorboard", path=str(tmp_path / "tb"))})
    trainer = Trainer(plan_for(named), TrainOptions(out=tmp_path / "elsewhere"))
    trainer.writes = True
    assert trainer._log_dir() == tmp_path / "tb"
    trainer.writes = False  # the other ranks log nothing
    assert trainer._log_dir() is None
