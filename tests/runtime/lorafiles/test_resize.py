"""`lorafile resize`: at full rank the file is equivalent to its input; at a lower rank each
module keeps the energy reported (checked against numpy's singular values), alpha keeps the
effective scale, LoCon convs keep their kernel, and LoHa needs --dense-fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lora_factory import deltas, lora_file, modules_by_key
from lora_factory import single_threaded as single_threaded  # autouse fixture
from lorafile.cli import main
from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.lorafiles.convert import read_lora
from lorafile.runtime.lorafiles.resize import Criterion, resize_file
from lorafile.runtime.models.sdxl import load_sdxl


@pytest.fixture(scope="module")
def files(tiny_sdxl_dir, tmp_path_factory):
    base, folder = load_sdxl(tiny_sdxl_dir / "diffusers"), tmp_path_factory.mktemp("resize")
    lora = lora_file(base, folder / "lora.safetensors", seed=3)
    loha = lora_file(base, folder / "loha.safetensors", algo="loha", rank=2, alpha=3)
    return lora, loha


def test_full_rank_is_exact(files, tmp_path):
    lora, _ = files
    result = resize_file(lora, tmp_path / "full.safetensors", Criterion(rank=4))
    before, after = deltas(lora), deltas(tmp_path / "full.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_allclose(after[key], before[key], atol=1e-6)
    old, new = modules_by_key(lora), modules_by_key(tmp_path / "full.safetensors")
    assert all(
        new[k].rank == old[k].rank and new[k].scale == pytest.approx(old[k].scale) for k in old
    )
    assert result.energy == pytest.approx(1.0) and all(
        m.energy == pytest.approx(1.0) for m in result.modules
    )


def test_lower_rank_keeps_the_reported_energy(files, tmp_path):
    lora, _ = files
    out = tmp_path / "r2.safetensors"
    result = resize_file(lora, out, Criterion(rank=2))
    before, after, written = deltas(lora), deltas(out), modules_by_key(out)
    reported = {m.name: m for m in result.modules}
    old = modules_by_key(lora)
    totals = kept = 0.0
    for key, m in old.items():
        s = np.linalg.svd(before[key], compute_uv=False)
        k = min(2, m.rank)
        energy = float((s[:k] ** 2).sum() / (s**2).sum())
        assert reported[m.source].energy == pytest.approx(energy, abs=1e-9)
        assert reported[m.source].rank_after == written[key].rank == k
        # Eckart-Young: the kept rank-k change is the best one; its error is the cut σ².
        residual = float(((after[key] - before[key]) ** 2).sum())
        assert residual == pytest.approx(float((s[k:] ** 2).sum()), rel=1e-4, abs=1e-10)
        assert written[key].scale == pytest.approx(m.scale)  # alpha rescaled with the rank
        totals, kept = totals + (s**2).sum(), kept + (s[:k] ** 2).sum()
    assert result.energy == pytest.approx(kept / totals)
    conv = written[("unet", "down_blocks.0.resnets.0.conv1")]
    assert tuple(conv.tensors["lora_down.weight"].shape[-2:]) == (3, 3)  # LoCon stays a conv
    assert result.bytes_after < result.bytes_before


def test_energy_and_ratio_criteria(files, tmp_path):
    lora, _ = files
    result = resize_file(lora, tmp_path / "e.safetensors", Criterion(energy=0.8))
    before = deltas(lora)
    old = modules_by_key(lora)
    by_name = {m.name: m for m in result.modules}
    for key, m in old.items():
        s = np.linalg.svd(before[key], compute_uv=False)
        share = np.cumsum(s**2) / (s**2).sum()
        expected = int(np.searchsorted(share, 0.8 - 1e-12) + 1)  # the smallest k reaching 0.8
        assert by_name[m.source].rank_after == min(expected, m.rank)
        assert by_name[m.source].energy >= 0.8 - 1e-9
    ratio = resize_file(lora, tmp_path / "q.safetensors", Criterion(ratio=1.0))
    assert {m.rank_after for m in ratio.modules} == {1}  # only σ₀ itself is >= σ₀ / 1


def test_loha_needs_the_dense_fallback(files, tmp_path):
    _, loha = files
    with pytest.raises(DiagnosticError) as err:
        resize_file(loha, tmp_path / "x.safetensors", Criterion(rank=4))
    assert err.value.diagnostics[0].code == "F724"
    out = tmp_path / "dense.safetensors"
    resize_file(loha, out, Criterion(rank=64), dense_fallback=True)
    before, after = deltas(loha), deltas(out)
    assert {m.algo for m in modules_by_key(out).values()} == {"lora"}
    for key in before:  # LoHa rank 2 -> ΔW rank <= 4: rank 64 keeps it whole
        np.testing.assert_allclose(after[key], before[key], atol=1e-6)


def test_criterion_checks():
    for bad in (
        Criterion(),
        Criterion(rank=0),
        Criterion(energy=1.5),
        Criterion(rank=2, energy=0.5),
    ):
        with pytest.raises(DiagnosticError) as err:
            bad.check()
        assert err.value.diagnostics[0].code == "F725"


def test_cli(files, tmp_path, capsys):
    lora, _ = files
    out = tmp_path / "cli.safetensors"
    assert main(["resize", str(lora), "--rank", "2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "retained energy" in text and "rank 4 -> 2" in text
    assert main(["resize", str(lora), "--energy", "0.9", "-o", str(out), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes_before"] > 0 and len(report["modules"]) == len(modules_by_key(lora))
    assert json.loads(read_lora(out).metadata["lorafile.resized"])["criterion"] == "--energy 0.9"


def test_nan_module_is_refused_not_an_svd_traceback(files, tmp_path, capsys):
    """A diverged run's file (NaN factors): resize and merge refuse it by name (F720)."""
    import torch
    from safetensors.torch import load_file, save_file

    lora, _ = files
    tensors = load_file(str(lora))
    key = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(tmp_path / "nan.safetensors"))
    out = tmp_path / "out.safetensors"
    for args in (
        ["resize", str(tmp_path / "nan.safetensors"), "--rank", "2", "-o", str(out)],
        ["merge", str(tmp_path / "nan.safetensors"), str(lora), "-o", str(out)],
    ):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "error[F720]" in err and "NaN or inf" in err and key.split(".")[0] in err, err
        assert not out.exists()
