"""`lorafile eval` end to end on the tiny model: two short runs (the trigger in the captions or
not), the report and its files, strength 0 against the base, a kohya file from `convert`
against its native source, scores logged during training, and the E9xx errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorafile.cli import main
from lorafile.runtime.demo import make_dataset
from lorafile.spec.models import (
    Adapter,
    Base,
    Buckets,
    Dataset,
    Interval,
    Log,
    Output,
    Recipe,
    Resolution,
    Sample,
    Save,
)
from train_runs import plan_for, short_train

PROMPTS = """\
# strong
zqx, a red circle
zqx, a blue square
# adjacent
zqx, a city street at night
# free
a red circle
a blue square
"""
STEPS = 30


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is faster on one thread, and CI shares its cores
    yield
    torch.set_num_threads(threads)


def recipe(base: Path, data: Path, out: Path, trigger: str | None, **changes) -> Recipe:
    fields = dict(
        name="tiny",
        base=Base(path=str(base)),
        datasets=(
            Dataset(
                path=str(data),
                captions="txt",
                resolution=Resolution(width=64, height=64),
                buckets=Buckets(min=64, max=128, step=64),
            ),
        ),
        trigger=trigger,
        adapter=Adapter(algo="locon", rank=8, alpha=8),
        train=short_train(steps=STEPS, batch=2, lr=1e-2, seed=7),
        save=Save(every=Interval(every=STEPS // 2), keep=2, layout="diffusers"),
        output=Output(path=str(out)),
        log=Log(to="tensorboard"),
    )
    return Recipe(**(fields | changes))


@pytest.fixture(scope="module")
def runs(tiny_sdxl_dir, tmp_path_factory):
    """Two 30-step LoCon runs on the demo's concept: `trigger` (captions carry `zqx`, with a
    sample block) and `plain` (no trigger: the captions alone)."""
    import torch

    from lorafile.runtime.evaluate.during import SampleScorer
    from lorafile.runtime.train.loop import TrainOptions, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    make_dataset(root / "data", 12, seed=1)
    base = tiny_sdxl_dir / "tiny_sdxl.safetensors"
    sample = Sample(
        every=Interval(every=STEPS // 2),
        steps=4,
        size=Resolution(width=64, height=64),
        seed=42,
        prompts=("zqx, a red circle", "zqx, a blue square", "a red circle"),
    )
    out = {}
    for name, trigger, extra in (("trigger", "zqx", {"sample": sample}), ("plain", None, {})):
        spec = recipe(base, root / "data", root / name, trigger, **extra)
        out[name] = train(plan_for(spec), TrainOptions(quiet=True, sample_scorer=SampleScorer))
    (root / "prompts.txt").write_text(PROMPTS)
    return {"root": root, "base": base, "prompts": root / "prompts.txt", **out}


def evaluate(target: Path, out: Path, prompts: Path, *extra: str) -> dict:
    """`lorafile eval` at 64x64 with 4 sampler steps (a run without a sample block would
    otherwise render at the SDXL default, 1024x1024 and 28 steps)."""
    fast = ["--prompts", str(prompts), "--steps", "4", "--size", "64x64", "-q"]
    code = main(["eval", str(target), "-o", str(out), *fast, *extra])
    assert code == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def report(runs):
    out = runs["root"] / "E"
    return out, evaluate(runs["trigger"].out, out, runs["prompts"], "--strengths", "0,0.5,1")


def test_eval_writes_grids_report_and_a_page_whose_images_exist(report):
    out, data = report
    assert [c["name"] for c in data["checkpoints"]] == ["step-000015", "final"]
    assert [c["step"] for c in data["checkpoints"]] == [15, 30]
    assert data["settings"]["strengths"] == [0.0, 0.5, 1.0] and data["headline"] == "1"
    assert [p["seed"] for p in data["prompts"]] == [42, 43, 44, 45, 46]  # the sample seed
    for c in data["checkpoints"]:
        assert set(c["scores"]) == {"0.5", "1"}
        with Image.open(out / c["grid"]) as grid:
            assert grid.size[1] > 5 * 64 and grid.size[0] >= 3 * 64  # 5 rows, 3 strengths
    page = (out / "index.html").read_text()
    links = set(re.findall(r'(?:src|href)="([^"]+)"', page))
    assert {"grids/checkpoints.png", "grids/final.png", "loss.svg"} <= links
    for link in links:
        assert (out / link).is_file(), link
    assert data["loss_curve"] == "loss.svg" and data["recipe"].startswith('recipe "tiny"')
    assert data["best"]["checkpoint"] in ("step-000015", "final")
    assert data["best"]["sentence"].startswith(f"`{data['best']['checkpoint']}`")
    assert data["training_images"] == 12
    scores = data["checkpoints"][-1]["scores"]["1"]
    assert scores["effect"] > 0.05 and 0 <= scores["memorisation"] <= 1


def test_strength_zero_is_the_base_model_bit_for_bit(runs, report):
    from lorafile.runtime.evaluate.prompts import read_prompt_file
    from lorafile.runtime.evaluate.render import Renderer, RenderSettings
    from lorafile.runtime.models.sdxl import load_sdxl

    out, _ = report
    prompts = list(read_prompt_file(runs["prompts"], 42).prompts)
    settings = RenderSettings(steps=4, size=(64, 64))
    models = load_sdxl(runs["base"])  # no LoRA was ever loaded into these
    for module in (models.unet, models.text_encoder, models.text_encoder_2):
        module.eval()
    renderer = Renderer(models, settings, "cpu")
    base = [np.asarray(im) for im in renderer.render(prompts)]
    saved = [np.asarray(Image.open(out / "images" / "base" / f"{i:02d}.png")) for i in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(base, saved, strict=True))

    renderer.use(runs["trigger"].adapter)
    renderer.set_strength(0.0)
    zero = [np.asarray(im) for im in renderer.render(prompts)]
    assert all(np.array_equal(a, b) for a, b in zip(base, zero, strict=True))
    renderer.set_strength(1.0)
    one = [np.asarray(im) for im in renderer.render(prompts)]
    assert not np.array_equal(one[0], base[0])
    renderer.use(None)  # removing the LoRA restores the base exactly too
    again = [np.asarray(im) for im in renderer.render(prompts)]
    assert all(np.array_equal(a, b) for a, b in zip(base, again, strict=True))


def test_kohya_file_from_convert_evaluates_the_same_as_its_native_file(runs):
    from lorafile.runtime.lorafiles.convert import convert_file

    native = runs["trigger"].adapter  # the run's own file: diffusers/peft layout
    kohya = runs["root"] / "kohya.safetensors"
    convert_file(native, kohya, "kohya")
    reports, images = [], []
    for name, path in (("native", native), ("kohya", kohya)):
        out = runs["root"] / f"E-{name}"
        data = evaluate(
            path, out, runs["prompts"], "--base", str(runs["base"]), "--strengths", "0,1"
        )
        reports.append(data["checkpoints"][0]["scores"])
        images.append([(out / p).read_bytes() for p in data["checkpoints"][0]["images"]["1"]])
    assert reports[0] == reports[1] and reports[0]["1"]["effect"] > 0.05
    assert images[0] == images[1]


def test_training_logs_the_scores_of_its_samples(runs):
    from lorafile.runtime.evaluate.curves import read_scalars

    logs = runs["trigger"].log_dir
    for tag in ("eval/effect", "eval/bleeding", "eval/diversity", "eval/memorisation"):
        assert [step for step, _ in read_scalars(logs, tag)] == [15, 30], tag
    assert all(v > 0 for _, v in read_scalars(logs, "eval/effect"))
    assert read_scalars(logs, "train/loss")[0][0] == 1  # the training scalars are untouched


def test_recipe_target_resolves_to_its_run_folder(runs, tmp_path):
    from lorafile.commands.eval import run_folder_of
    from lorafile.compiler.format import format_recipe
    from lorafile.runtime.train.plan import recipe_of

    plan = json.loads((runs["trigger"].out / "plan.json").read_text())
    path = tmp_path / "r.recipe"
    path.write_text(format_recipe(recipe_of(plan)))
    assert run_folder_of(path) == runs["trigger"].out


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["{root}/trigger/tiny.safetensors"], "E902"),
        (["{root}/nowhere"], "E901"),
        (["{root}/trigger", "--checkpoints", "99"], "E905"),
        (["{root}/trigger", "--strengths", "a,b"], "E905"),
        (["{root}/trigger", "--size", "65x64"], "E905"),
        (["{root}/trigger", "--prompts", "{tmp}/bad.txt"], "E903"),
    ],
)
def test_user_errors_are_diagnostics(runs, tmp_path, capsys, argv, code):
    (tmp_path / "bad.txt").write_text("a prompt before any group header\n")
    argv = [a.format(root=runs["root"], tmp=tmp_path) for a in argv]
    assert main(["eval", *argv, "-o", str(tmp_path / "out"), "-q"]) == 1
    assert f"error[{code}]" in capsys.readouterr().err


def test_a_non_empty_output_folder_is_refused(runs, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["eval", str(runs["trigger"].out), "-o", str(tmp_path), "-q"]) == 1
    assert "error[E906]" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_a_lora_trained_without_the_trigger_bleeds(runs):
    """The trigger-less LoRA changes trigger-free prompts about as much as trigger prompts:
    bleeding near 1 (0 would mean free prompts untouched; test_eval_scores.py checks the
    formula). On this tiny model the LoRA trained WITH the trigger bleeds as much (docs/eval.md,
    "Limits"): its random UNet barely listens to the prompt, and its VAE's posterior noise
    swamps the images, so no run can tie the concept to a word. The comparison of the two runs
    is test_eval_bleeding.py's, on a tiny model built to listen to its prompt."""
    out = runs["root"] / "E-plain"
    data = evaluate(runs["plain"].out, out, runs["prompts"], "--strengths", "0,1")
    for checkpoint in data["checkpoints"]:
        scores = checkpoint["scores"]["1"]
        assert scores["effect"] > 0.05, checkpoint["name"]
        assert scores["bleeding"] > 0.7, (checkpoint["name"], scores)


@pytest.mark.parametrize(
    ("plan_text", "why"),
    [
        ('{"resolved": ', "cannot be read as JSON"),
        ("[1, 2]", "holds no JSON object"),
        ('{"lorafile_plan": 1}', "has no `resolved` and `recipe` sections"),
        ('{"lorafile_plan": 1, "resolved": {}, "recipe": {}}', "names no output"),
        (
            '{"lorafile_plan": 1, "resolved": {"output": {"path": "/o", "name": "x"}}, '
            '"recipe": {}}',
            "names no base model",
        ),
    ],
)
def test_a_damaged_plan_is_e901_not_a_traceback(tmp_path, capsys, plan_text, why):
    """A run folder whose plan.json was truncated or edited: eval says which file and why."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(plan_text)
    assert main(["eval", str(run), "-o", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "error[E901]" in err and f"{run / 'plan.json'}" in err and why in err
    assert (run / "plan.json").read_text() == plan_text


def test_a_missing_dataset_is_refused_before_anything_renders(runs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", str(runs["trigger"].out), "--dataset", str(tmp_path / "nope"), "-o", str(out)]
    assert main([*argv, "-q"]) == 1
    assert "error[E901]" in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*.png"))
