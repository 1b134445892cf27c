"""`lorafile card` on a tiny native run: the card renders from the jinja2 template, its front
matter parses as YAML with the trigger, the license placeholder and widget images that exist;
the prep and eval sections appear only when their reports do."""

from __future__ import annotations

import json

import pytest
import yaml

from lora_factory import one_thread
from lorafile.cli import main
from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.lorafiles.card import LICENSE_PLACEHOLDER, write_card
from train_runs import checkpointed_plan


@pytest.fixture(scope="module")
def run_dir(tiny_sdxl_dir, tmp_path_factory):
    """A 2-step native run of the tiny model that samples its two prompts at the end."""
    from lorafile.runtime.train.loop import TrainOptions, train

    tmp = tmp_path_factory.mktemp("card_run")
    plan = json.loads(checkpointed_plan(tiny_sdxl_dir, tmp, steps=2).read_text())
    with one_thread():
        result = train(plan, TrainOptions(out=tmp / "run", quiet=True))
    return result.out


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_card_from_a_run(run_dir, tmp_path):
    out = run_dir / "README.md"
    result = write_card(run_dir, out, comfyui=run_dir / "workflow.json", force=True)
    text = out.read_text()
    meta = front_matter(text)
    assert meta["instance_prompt"] == "zqx"
    assert meta["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert meta["license"] == LICENSE_PLACEHOLDER and "lora" in meta["tags"]
    assert [w["text"] for w in meta["widget"]] == ["zqx"]  # the run's sample prompt
    assert all((out.parent / w["output"]["url"]).is_file() for w in meta["widget"])
    assert "<lora:tiny:1>" in text and 'weight_name="tiny.safetensors"' in text
    assert "| rank / alpha | 4 / 4 |" in text and "`ss_network_dim`" in text
    assert "## Dataset" not in text and "## Evaluation" not in text and result.sections == []
    assert "`workflow.json` is a ready workflow" in text
    flow = json.loads((run_dir / "workflow.json").read_text())
    assert {n["class_type"] for n in flow.values()} >= {"LoraLoader", "KSampler"}


def test_prep_and_eval_reports_add_sections(run_dir, tmp_path):
    (run_dir / "prep.json").write_text(json.dumps({
        "dataset": "data",
        "images": [{"path": "a.png", "problems": [{"kind": "blurry"}]}, {"path": "b.png", "problems": []}],
        "summary": {"buckets": 2},
    }))  # fmt: skip
    grid = run_dir / "eval" / "grid.png"
    grid.parent.mkdir(exist_ok=True)
    grid.write_bytes((next((run_dir / "samples").glob("step-*")) / "00.png").read_bytes())
    (run_dir / "eval" / "report.json").write_text(json.dumps({
        "checkpoints": [{"name": "step-000002", "scores": {"bleeding": 0.12, "strength": 0.4}}],
        "best": {"name": "step-000002", "reason": "the only one."},
        "images": [{"path": "grid.png", "prompt": "zqx, a grid"}],
    }))  # fmt: skip
    out = tmp_path / "card" / "README.md"
    result = write_card(run_dir, out)
    text = out.read_text()
    assert result.sections == ["dataset", "evaluation"]
    assert "| images | 2 |" in text and "| problems: blurry | 1 |" in text
    assert "| step-000002 | 0.12 | 0.4 |" in text and "Best checkpoint: **step-000002**" in text
    meta = front_matter(text)
    assert [w["text"] for w in meta["widget"]] == ["zqx, a grid"]  # eval images first
    assert (out.parent / meta["widget"][0]["output"]["url"]).resolve() == grid.resolve()
    (run_dir / "eval" / "report.json").write_text("{not json")
    result = write_card(run_dir, out, force=True)
    assert "## Evaluation" not in out.read_text() and [d.code for d in result.warnings] == ["F727"]
    (run_dir / "prep.json").unlink()
    (run_dir / "eval" / "report.json").unlink()


def test_lora_file_alone_and_refusals(run_dir, tmp_path, capsys):
    lora = tmp_path / "alone.safetensors"
    lora.write_bytes((run_dir / "tiny.safetensors").read_bytes())
    out = tmp_path / "README.md"
    assert main(["card", str(lora), "-o", str(out), "--trigger", "zqx"]) == 0
    meta = front_matter(out.read_text())
    assert meta["instance_prompt"] == "zqx" and "widget" not in meta
    assert "<lora:alone:1>" in out.read_text()
    assert main(["card", str(lora), "-o", str(out)]) == 1  # exists: never replaced silently
    assert "F728" in capsys.readouterr().err
    with pytest.raises(DiagnosticError) as err:
        write_card(tmp_path / "empty_dir_missing", tmp_path / "x.md")
    assert err.value.diagnostics[0].code == "F726"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"recipe": "x"}, "no `resolved` and `recipe` sections"),
        ({"resolved": [1]}, "no `resolved` and `recipe` sections"),
        ({"recipe": {"adapter": 5}}, "`recipe.adapter` is not a section"),
        ({"recipe": {"datasets": {"a": 1}}}, "`recipe.datasets` is not a list of sections"),
    ],
)
def test_plan_of_the_wrong_shape_is_left_out_with_f727(run_dir, tmp_path, change, why):
    """A plan.json edited into the wrong shape: the card is written from the LoRA file alone,
    with an F727 warning, not an AttributeError traceback."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "tiny.safetensors").write_bytes((run_dir / "tiny.safetensors").read_bytes())
    plan = json.loads((run_dir / "plan.json").read_text())
    (folder / "plan.json").write_text(json.dumps({**plan, **change}))
    result = write_card(folder, tmp_path / "README.md")
    assert any(d.code == "F727" and why in d.message for d in result.warnings), result.warnings
    assert (tmp_path / "README.md").is_file()
