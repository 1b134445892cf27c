"""`lorafile merge A B -o C` (no base): rank concatenation is exact, SVD to --rank keeps the
energy it reports (checked against numpy's SVD of the summed weight change)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lora_factory import deltas, lora_file
from lora_factory import single_threaded as single_threaded  # autouse fixture
from lorafile.cli import main
from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.lorafiles.combine import combine_files
from lorafile.runtime.lorafiles.convert import read_lora
from lorafile.runtime.lorafiles.merge import LoraSpec
from lorafile.runtime.models.sdxl import load_sdxl


@pytest.fixture(scope="module")
def files(tiny_sdxl_dir, tmp_path_factory):
    base, folder = load_sdxl(tiny_sdxl_dir / "diffusers"), tmp_path_factory.mktemp("combine")
    a = lora_file(base, folder / "a.safetensors", seed=0)
    b = lora_file(base, folder / "b.safetensors", seed=1, rank=3, alpha=1.5)
    loha = lora_file(base, folder / "loha.safetensors", algo="loha", rank=2, alpha=2)
    return a, b, loha


def test_concatenation_is_exact(files, tmp_path):
    a, b, _ = files
    result = combine_files([LoraSpec(a, 0.5), LoraSpec(b, -1.0)], tmp_path / "c.safetensors")
    da, db, dc = deltas(a), deltas(b), deltas(tmp_path / "c.safetensors")
    assert dc.keys() == da.keys() == db.keys()
    for key in da:
        np.testing.assert_allclose(dc[key], 0.5 * da[key] - db[key], atol=1e-6)
    ranks = {m.path: m.rank for m in read_lora(tmp_path / "c.safetensors").modules}
    assert ranks["down_blocks.1.attentions.0.proj_in"] == 4 + 3
    assert ranks["down_blocks.0.resnets.0.conv1"] == 2 + 2  # LoCon convs concatenate too
    assert result.mode == "concat" and result.energy == 1.0


def test_svd_keeps_the_energy_it_reports(files, tmp_path):
    a, b, _ = files
    result = combine_files([LoraSpec(a, 0.5), LoraSpec(b)], tmp_path / "s.safetensors", rank=2)
    da, db, ds = deltas(a), deltas(b), deltas(tmp_path / "s.safetensors")
    reported = {m.name: m.energy for m in result.modules}
    written = {(m.component, m.path): m.rank for m in read_lora(tmp_path / "s.safetensors").modules}
    totals, kept = 0.0, 0.0
    for m in read_lora(a).modules:
        key = (m.component, m.path)
        target = 0.5 * da[key] + db[key]
        s = np.linalg.svd(target, compute_uv=False)
        k = min(2, len(s))
        energy = float((s[:k] ** 2).sum() / (s**2).sum())
        assert reported[m.source] == pytest.approx(energy, abs=1e-9)
        # Eckart-Young: the written rank-k module is the best one, its error is the cut σ's.
        residual = float(((ds[key] - target) ** 2).sum())
        assert residual == pytest.approx(float((s[k:] ** 2).sum()), rel=1e-5, abs=1e-9)
        assert written[key] == k
        totals, kept = totals + (s**2).sum(), kept + (s[:k] ** 2).sum()
    assert result.energy == pytest.approx(kept / totals)
    assert result.energy < 0.99  # rank 2 of 7 loses something on random factors


def test_loha_needs_svd(files, tmp_path):
    a, _, loha = files
    with pytest.raises(DiagnosticError) as err:
        combine_files([LoraSpec(a), LoraSpec(loha)], tmp_path / "x.safetensors")
    assert err.value.diagnostics[0].code == "F724"
    result = combine_files([LoraSpec(a), LoraSpec(loha)], tmp_path / "y.safetensors", rank=64)
    da, dl, dy = deltas(a), deltas(loha), deltas(tmp_path / "y.safetensors")
    for key in dl:  # rank 64 covers the whole sum: nothing is cut
        np.testing.assert_allclose(dy[key], da[key] + dl[key], atol=1e-5)
    assert result.energy == pytest.approx(1.0)


def test_cli_json(files, tmp_path, capsys):
    a, b, _ = files
    out = tmp_path / "cli.safetensors"
    assert (
        main(["merge", f"{a}:0.5", str(b), "--rank", "3", "-o", str(out), "--format", "json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "svd" and 0 < report["energy"] <= 1
    assert [(x["file"], x["strength"]) for x in report["inputs"]] == [
        ("a.safetensors", 0.5),
        ("b.safetensors", 1.0),
    ]
    assert main(["merge", str(a), str(b), "-o", str(a)]) == 1  # never overwrites an input
    assert "F713" in capsys.readouterr().err
