"""The native backend: plan.json written by `compile --target native`, read back, printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lorafile.backends.base import get
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
from lorafile.runtime.train.plan import build_plan, describe_plan, recipe_of
from lorafile.spec.models import (
    Base,
    Buckets,
    Dataset,
    Interval,
    Output,
    Recipe,
    Regularization,
    Resolution,
    Save,
    Train,
    Warmup,
)


def _folder(path: Path, sizes, captions=True) -> Path:
    path.mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i * 40, 0, 0)).save(path / f"{i}.png")
        if captions:
            (path / f"{i}.txt").write_text(f"thing {i}")
    return path


def _recipe(tmp_path: Path, **train) -> Recipe:
    return Recipe(
        name="t",
        base=Base(path="model.safetensors"),
        datasets=(
            Dataset(
                path="data",
                repeats=2,
                resolution=Resolution(width=96, height=96),
                buckets=Buckets(min=64, max=128, step=32),
            ),
        ),
        trigger="zqx",
        regularization=(Regularization(path="reg", class_prompt="a shape", ratio=0.5, weight=0.7),),
        train=Train(**({"epochs": 3} | train), batch=2, warmup=Warmup(value=10, unit="percent")),
        save=Save(every=Interval(every=1, unit="epochs"), keep=2),
        output=Output(path="out"),
    )


@pytest.fixture
def project(tmp_path):
    _folder(tmp_path / "data", [(96, 96), (96, 96), (128, 64), (64, 128), (128, 64)])
    _folder(tmp_path / "reg", [(96, 96), (96, 96)], captions=False)
    return tmp_path


def test_plan_resolves_steps_buckets_files(project):
    bag = DiagnosticBag()
    plan = build_plan(_recipe(project), bag, base_dir=project)
    r = plan["resolved"]
    # 10 subject samples (5 images x 2 repeats) + 5 reg samples; batches per bucket:
    # 96x96: 4 subject + 5 reg = 9 -> 5; 128x64: 4 -> 2; 64x128: 2 -> 1.
    assert r["batches_per_epoch"] == 8 and r["steps_per_epoch"] == 8
    assert r["steps"] == 24 and r["epochs"] == 3
    assert r["warmup_steps"] == 2 and r["effective_batch"] == 2
    assert r["save"]["every_steps"] == 8
    assert plan["buckets"] == [
        {"size": [64, 128], "images": 1},
        {"size": [96, 96], "images": 2},
        {"size": [128, 64], "images": 2},
    ]
    images = [f for f in plan["files"] if f["role"] == "image"]
    assert len(images) == 5 and all(len(f["sha256"]) == 64 for f in images)
    assert images[0]["caption"] == "zqx, thing 0"
    reg = [f for f in plan["files"] if f["role"] == "regularization"]
    assert [f["caption"] for f in reg] == ["a shape", "a shape"]
    assert len([f for f in plan["files"] if f["role"] == "caption"]) == 5
    assert plan["memory"]["optimizer"] == "adamw8bit" and plan["memory"]["attention"] == "sdpa"
    assert r["base"] == str(project / "model.safetensors")
    assert not bag.has_errors


def test_epochs_without_images_is_an_error(tmp_path):
    bag = DiagnosticBag()
    build_plan(_recipe(tmp_path), bag, base_dir=tmp_path)
    codes = [d.code for d in bag]
    assert "T560" in codes and "T563" in codes and bag.has_errors


def test_steps_without_folders_only_warns(tmp_path):
    bag = DiagnosticBag()
    plan = build_plan(_recipe(tmp_path, epochs=None, steps=50), bag, base_dir=tmp_path)
    assert plan["resolved"]["steps"] == 50 and not bag.has_errors
    assert {d.code for d in bag} == {"T560"}


def test_backend_write_read_round_trip(project, monkeypatch):
    monkeypatch.chdir(project)
    recipe = _recipe(project)
    native = get("native")
    bag = DiagnosticBag()
    compiled = native.write(recipe, bag)
    assert list(compiled.files) == ["plan.json"]
    (project / "plan.json").write_text(compiled.files["plan.json"])
    assert native.read(project / "plan.json", DiagnosticBag()) == recipe
    assert recipe_of(json.loads(compiled.files["plan.json"])) == recipe
    text = describe_plan(json.loads(compiled.files["plan.json"]))
    assert "steps            24 (8 per epoch, 3.0 epochs)" in text and "64x128:1" in text


def test_read_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(DiagnosticError, match="not a lorafile plan"):
        get("native").read(tmp_path / "x.json", DiagnosticBag())


def test_native_compile_path_imports_no_torch(project):
    code = (
        "import sys; from lorafile.backends.base import get; "
        "from lorafile.runtime.train import plan; import lorafile.commands.plan, lorafile.commands.train; "
        "print([m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_compile_native_resolves_paths_next_to_the_recipe(project, tmp_path_factory, monkeypatch):
    from lorafile.cli import main

    (project / "r.recipe").write_text(
        'recipe "r"\nbase sdxl "model.safetensors"\ndataset "data" {\n    resolution 96\n}\n'
        'train {\n    epochs 1\n}\noutput "out"\n'
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    out = project / "compiled"
    assert main(["compile", str(project / "r.recipe"), "--target", "native", "-o", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["datasets"][0]["images"] == 5 and plan["resolved"]["steps"] == 5
    assert plan["resolved"]["output"]["path"] == str(project / "out")
