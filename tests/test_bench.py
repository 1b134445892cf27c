"""The benchmark scripts run: bench/train_cpu.py (two configurations, one step) and
bench/gpu.sh's CPU dry run (tiny model), so they are not broken when a GPU is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_train_cpu_bench_prints_ratios_from_one_run():
    out = _run(
        [
            sys.executable,
            "bench/train_cpu.py",
            "--steps",
            "1",
            "--only",
            "lorafile,reference",
            "--json",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    by = {r["name"]: r for r in rows}
    assert set(by) == {"lorafile", "reference"}
    for r in rows:
        assert r["steps"] == 1 and r["steps_per_s"] > 0 and r["peak_rss_mib"] > 100
    assert "x the reference loop's speed" in out.stdout


@pytest.mark.slow
def test_gpu_bench_dry_run_on_cpu():
    out = _run(["bash", "bench/gpu.sh", "--dry-run", "--batches", "1", "--json"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["batch"], r["checkpointing"]) for r in rows] == [(1, True), (1, False)]
    for r in rows:
        assert r["s_per_step"] > 0 and r["tflop_per_step"] > 0
        assert r["max_memory_allocated"] is None  # no GPU: nothing is claimed as measured
    # Checkpointing recomputes the forward: the FLOP counter sees more work.
    assert rows[0]["tflop_per_step"] > 1.2 * rows[1]["tflop_per_step"]
    assert "dry run" in out.stdout


@pytest.mark.slow
def test_gpu_bench_lever_sweep_dry_run_on_cpu():
    """The lever sweep runs (compile is left out of a CPU dry run: inductor takes minutes);
    on a CPU the CUDA-only levers report themselves off instead of claiming an effect."""
    out = _run(["bash", "bench/gpu.sh", "--dry-run", "--levers", "--batches", "1", "--json"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["label"] for r in rows] == ["NCHW", "default", "fused adamw"]
    assert [r["optimizer"] for r in rows] == ["adamw8bit", "adamw8bit", "adamw"]
    assert all(r["batch"] == 1 and r["checkpointing"] for r in rows)
    assert not any(r["channels_last"] or r["fused"] or r["compile"] for r in rows)
    assert all(r["s_per_step"] > 0 and r["tflop_per_step"] > 0 for r in rows)


def test_gpu_lever_sweep_measures_cuda_graphs_on_a_gpu(monkeypatch):
    """On a GPU the sweep has both torch.compile levers: default mode and "reduce-overhead"
    (CUDA graphs); the CPU dry run leaves both out rather than wait minutes for inductor."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_train

    labels = [(c.label, c.batch, c.compile_mode) for c in gpu_train.lever_cases(1024, False)]
    for batch in (1, 4):
        assert ("+compile", batch, "default") in labels
        assert ("+cudagraphs", batch, "reduce-overhead") in labels
    assert not any(c.compile for c in gpu_train.lever_cases(1024, True))


def test_gpu_wheels_are_the_versions_the_tests_run():
    """bench/gpu_wheels.sh pins the wheels carried to the device machine: the same versions
    as this environment, so the GPU runs the code the CPU suite tested."""
    import re
    from importlib.metadata import version

    script = (ROOT / "bench" / "gpu_wheels.sh").read_text()
    pins = re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s)]*)", script)
    assert {name.lower().replace("_", "-") for name, _ in pins} >= {
        "bitsandbytes", "diffusers", "pydantic", "pydantic-core", "lark",
    }  # fmt: skip
    assert [(name, version(name)) for name, _ in pins] == pins
