"""The GPU catalog: vendors' sizes and forgiving name matching."""

from __future__ import annotations

import pytest

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.compiler.gpus import lookup as lookup_gpu
from lorafile.spec import gpus

GIB = 2**30


@pytest.mark.parametrize("name", ["4090", "rtx4090", "RTX 4090", "NVIDIA GeForce RTX 4090",
                                  "rtx-4090", "RTX 4090 24GB"])  # fmt: skip
def test_forgiving_names(name):
    assert lookup_gpu(name).name == "RTX 4090"


@pytest.mark.parametrize(
    ("name", "gib"),
    [
        ("RTX 2080 Ti", 11), ("RTX 3060", 12), ("RTX 3060 8GB", 8), ("RTX 3080", 10),
        ("RTX 4060 Ti 16GB", 16), ("RTX 4070", 12), ("RTX 4080 Super", 16), ("RTX 5060 Ti", 16),
        ("RTX 5080", 16), ("RTX 5090", 32), ("RTX A4000", 16), ("RTX A6000", 48),
        ("RTX 4000 Ada", 20), ("RTX 6000 Ada", 48), ("L4", 24), ("L40S", 48), ("A10", 24),
        ("A100 40GB", 40), ("A100 80GB", 80), ("H100", 80), ("H200", 141), ("M3 Max 64GB", 64),
    ],
)  # fmt: skip
def test_vendor_sizes(name, gib):
    gpu = lookup_gpu(name)
    assert gpu.memory_bytes == gib * GIB


def test_every_series_is_present():
    names = {g.name for g in gpus.CATALOG}
    for prefix in ("RTX 20", "RTX 30", "RTX 40", "RTX 50", "RTX A", "M1", "M2", "M3", "M4"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert {"L4", "L40S", "A10", "A100 40GB", "A100 80GB", "H100", "H200"} <= names


def test_catalog_keys_are_unique():
    keys = [gpus.normalize(g.name) for g in gpus.CATALOG]
    assert len(keys) == len(set(keys))


def test_apple_budget_is_the_gpu_share():
    small, big = lookup_gpu("M2 16GB"), lookup_gpu("M2 Ultra 192GB")
    assert small.budget_bytes == int(16 * GIB * 2 / 3)
    assert big.budget_bytes == int(192 * GIB * 3 / 4)
    assert lookup_gpu("RTX 4090").budget_bytes == 24 * GIB


def test_unknown_name_suggests():
    with pytest.raises(DiagnosticError) as err:
        lookup_gpu("RTX 4095")
    diag = err.value.diagnostics[0]
    assert diag.code == "V402"
    assert "RTX 4090" in diag.message
    assert "vram" in diag.help


def test_ambiguous_size_is_suggested_not_guessed():
    assert gpus.find("M3 Max") is None
    assert "M3 Max 64GB" in gpus.suggestions("M3 Max")
