"""`lorafile lint`: verdicts, suggestions, memory auto, the CLI, snapshots, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lorafile.cli import main
from lorafile.compiler import fit, lint, vram
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
from lorafile.compiler.parse import parse_recipe_with_positions
from lorafile.spec import models as m
from repo_paths import TESTS
from snapshot import assert_snapshot
from vram_helpers import recipe

SNAPSHOTS = TESTS / "snapshots" / "lint"
GB = 10**9


def load(name: str):
    path = SNAPSHOTS / f"{name}.recipe"
    return parse_recipe_with_positions(path.read_text(), path.name)


def character_batch2_uncached() -> m.Recipe:
    """The character recipe at batch 2 with checkpointing and caching off (see docs/vram.md)."""
    r, _ = load("character_ohwx")
    train = r.train.model_copy(
        update={"checkpointing": False, "cache": m.Cache(latents=False, text=False)}
    )
    return r.model_copy(update={"train": train})


# ==== the acceptance cases ======================================================================
def test_watercolor_fits_12gb_as_written():
    r, smap = load("watercolor_style")
    report = lint.lint_recipe(r, smap=smap)
    assert report.budget.bytes == 12 * GB
    assert report.fits is True
    assert not any(d.is_error for d in report.diagnostics)
    assert report.exit_code == 0


def test_character_batch2_activations_dominate_and_checkpointing_ranks_first():
    r = character_batch2_uncached()
    assert r.train.batch == 2
    report = lint.lint_recipe(r, budget=lint.Budget(8 * GB, "8 GB"))
    assert report.estimate.dominant.name == "activations"
    assert report.fits is False and report.exit_code == 1
    changes = [s.change for s in report.suggestions]
    assert changes[0] == "turn on gradient checkpointing"
    assert "cache text-encoder outputs" in changes
    # memory auto switches on the caches and checkpointing, the cheapest measures in speed...
    no_samples = r.model_copy(update={"sample": None})
    fitted, fit_report = fit.fit_recipe(no_samples, 8 * GB)
    switched = [c for c, _ in fit_report.switched]
    assert {"cache text-encoder outputs", "turn on gradient checkpointing"} <= set(switched)
    assert "store the base weights in fp8" not in switched
    assert fit_report.after_bytes <= 8 * GB
    assert fitted.train.checkpointing and fitted.train.cache.text
    # ...but with 832x1216 samples the VAE decode sets a floor only an fp8 base gets under.
    _, with_samples = fit.fit_recipe(r, 8 * GB)
    assert "store the base weights in fp8" in [c for c, _ in with_samples.switched]


def test_character_as_written_is_dominated_by_the_unet_weights():
    # As written it already checkpoints and caches: the frozen UNet is the largest term.
    r, _ = load("character_ohwx")
    report = lint.lint_recipe(r, budget=lint.Budget(8 * GB, "8 GB"))
    assert report.estimate.dominant.name == "frozen UNet weights"
    assert report.suggestions[0].change == "store the base weights in fp8"


# ==== verdicts ==================================================================================
def test_no_budget_no_verdict():
    report = lint.lint_recipe(recipe())
    assert report.fits is None
    assert "V404" in [d.code for d in report.diagnostics]
    assert report.exit_code == 0


def test_unknown_gpu_in_hardware_is_an_error():
    r = recipe(hardware=m.Hardware(gpu="RTX 4095"))
    report = lint.lint_recipe(r)
    diag = next(d for d in report.diagnostics if d.code == "V402")
    assert "RTX 4090" in diag.message
    assert report.exit_code == 1


def test_sampling_over_budget_warns():
    sample = m.Sample(
        every=m.Interval(every=100), prompts=("a",), size=m.Resolution(width=2048, height=2048)
    )
    r = recipe(train={"cache": m.Cache(latents=True, text=True)}, sample=sample)
    est = vram.estimate(r)
    budget = (est.step_bytes + est.total_bytes) // 2
    report = lint.lint_recipe(r, budget=lint.Budget(budget, "test"))
    found = [d.code for d in report.diagnostics]
    assert "V405" in found and "V401" in found  # the run as a whole does not fit


def test_close_to_the_limit_warns():
    est = vram.estimate(recipe())
    report = lint.lint_recipe(recipe(), budget=lint.Budget(int(est.total_bytes * 1.02), "test"))
    assert report.fits and "V406" in [d.code for d in report.diagnostics]


# ==== memory auto ===============================================================================
def test_fit_keeps_a_recipe_that_fits():
    r = recipe()
    fitted, report = fit.fit_recipe(r, 80 * GB)
    assert fitted == r and report.switched == []


def test_fit_prefers_free_measures():
    r = recipe(train={"checkpointing": True})
    need = vram.estimate(r).total_bytes - 1 * 2**30  # caching TEs frees 1.5 GiB
    fitted, report = fit.fit_recipe(r, need)
    assert [c for c, _ in report.switched] == ["cache text-encoder outputs"]
    assert fitted.train.cache.text


def test_fit_cannot_fit_reports_the_closest():
    with pytest.raises(DiagnosticError) as err:
        fit.fit_recipe(recipe(train={"checkpointing": False}), 2 * GB)
    diag = err.value.diagnostics[0]
    assert diag.code == "V403" and "closest is" in diag.message


def test_memory_auto_in_lint():
    r = recipe(train={"memory": "auto", "checkpointing": False, "batch": 2})
    report = lint.lint_recipe(r, budget=lint.Budget(10 * GB, "10 GB"))
    assert report.fitted is not None and report.fitted.switched
    assert report.fits


# ==== rendering, JSON, CLI ======================================================================
def test_json_shape():
    report = lint.lint_recipe(recipe(), budget=lint.Budget(12 * GB, "12 GB"))
    data = lint.to_json(report)
    assert {
        "total_bytes",
        "budget_bytes",
        "fits",
        "components",
        "suggestions",
        "diagnostics",
    } <= set(data)
    assert data["components"][0]["name"] == "frozen UNet weights"
    assert all({"change", "saves_bytes", "cost"} == set(s) for s in data["suggestions"])
    saves = [s["saves_bytes"] for s in data["suggestions"]]
    assert saves == sorted(saves, reverse=True)
    json.dumps(data)


def test_cli_exit_codes(capsys):
    path = str(SNAPSHOTS / "watercolor_style.recipe")
    assert main(["lint", path]) == 0
    assert main(["lint", path, "--vram", "6GB"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit" in out
    assert main(["lint", path, "--gpu", "4090", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["budget_bytes"] == 24 * 2**30 and data["fits"] is True


def test_cli_bad_vram(capsys):
    path = str(SNAPSHOTS / "watercolor_style.recipe")
    assert main(["lint", path, "--vram", "lots"]) == 1
    assert "V407" in capsys.readouterr().err


def test_lint_does_not_import_torch():
    code = (
        "import sys; from lorafile.cli import main; "
        f"rc = main(['lint', {str(SNAPSHOTS / 'character_ohwx.recipe')!r}, '--format', 'json']); "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


# ==== snapshots =================================================================================
@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("watercolor_style", []),
        ("character_ohwx", ["--vram", "8GB"]),
        ("character_uncached", ["--vram", "8GB"]),
        ("ink_locon", ["--trainer", "kohya"]),
        ("ink_locon", ["--trainer", "simpletuner", "--gpu", "RTX 4060"]),
        ("character_ohwx", ["--format", "json", "--gpu", "RTX 3060"]),
    ],
)
def test_snapshot(name, args, capsys, monkeypatch):
    monkeypatch.chdir(SNAPSHOTS)
    main(["lint", f"{name}.recipe", *args])
    out = capsys.readouterr().out
    suffix = "-".join(a.strip("-").replace(" ", "") for a in args) or "default"
    expected = SNAPSHOTS / f"{name}.{suffix}.{'json' if '--format' in args else 'txt'}"
    assert_snapshot(expected, out)


def test_render_text_sections():
    r, smap = load("watercolor_style")
    bag = DiagnosticBag(
        file="watercolor_style.recipe", source=(SNAPSHOTS / "watercolor_style.recipe").read_text()
    )
    text = lint.render_text(lint.lint_recipe(r, smap=smap, bag=bag))
    for part in ("frozen UNet weights", "CUDA context and allocator overhead", "verdict: fits",
                 "suggestions (largest saving first):", "lint:", "watercolor_style.recipe:14:1"):  # fmt: skip
        assert part in text


def test_cli_kohya_config(capsys):
    path = str(SNAPSHOTS / "kohya_seed.toml")
    assert main(["lint", path, "--gpu", "RTX 3060", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainer"] == "kohya"
    # The config turns on neither sdpa nor xformers: plain attention, and the fix is suggested.
    assert "use SDPA attention (`sdpa = true`)" in [s["change"] for s in data["suggestions"]]
    # It samples from a prompt file lorafile cannot read: kohya's 512x512 default is flagged.
    assert "L313" in [d["code"] for d in data["diagnostics"]]
    assert "sampling" in [p["name"] for p in data["phases"]]
