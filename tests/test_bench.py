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
    # the main matrix: lorafile's eager step, the example's peer step, lorafile's static step
    assert [(r["kind"], r["batch"], r["checkpointing"]) for r in rows] == [
        (kind, 1, gc) for gc in (True, False) for kind in ("lorafile", "peer", "graphs")
    ]
    for r in rows:
        assert r["s_per_step"] > 0 and r["tflop_per_step"] > 0
        assert r["max_memory_allocated"] is None  # no GPU: nothing is claimed as measured
        assert r["captured"] is False  # a CPU captures nothing
    # Checkpointing recomputes the forward: the FLOP counter sees more work.
    assert rows[0]["tflop_per_step"] > 1.2 * rows[3]["tflop_per_step"]
    # The peer adapts attention only, lorafile attention and ff: fewer FLOPs for the peer.
    assert rows[4]["tflop_per_step"] < rows[3]["tflop_per_step"] == rows[5]["tflop_per_step"]
    assert "dry run" in out.stdout and "x the peer's time per step" in out.stdout


@pytest.mark.slow
def test_gpu_bench_lever_sweep_dry_run_on_cpu():
    """The lever sweep runs (compile is left out of a CPU dry run: inductor takes minutes);
    on a CPU the CUDA-only levers report themselves off instead of claiming an effect, and
    fused AdamW (fused on the CPU too) is on in its own row only."""
    out = _run(["bash", "bench/gpu.sh", "--dry-run", "--levers", "--batches", "1", "--json"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["label"] for r in rows] == ["NCHW", "default", "fused adamw"]
    assert [r["optimizer"] for r in rows] == ["adamw8bit", "adamw8bit", "adamw"]
    assert all(r["batch"] == 1 and r["checkpointing"] for r in rows)
    assert not any(r["channels_last"] or r["compile"] for r in rows)
    assert [r["fused"] for r in rows] == [False, False, True]
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


def test_gpu_bench_main_matrix_and_regional_compile_cases(monkeypatch):
    """bench/gpu.sh's one invocation: b1/b4 x checkpointing, each as lorafile's eager step, the
    example's peer step and the captured static step; `--regional` is the separate one."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu_peer
    import gpu_train

    args = gpu_train.parse_args([])
    assert (args.steps, args.warmup) == (10, 3)
    cases = gpu_train.choose_cases(args)
    assert {(c.kind, c.batch, c.checkpointing) for c in cases} == {
        (kind, b, gc) for kind in ("lorafile", "peer", "graphs") for b in (1, 4) for gc in (1, 0)
    }
    regional = gpu_train.choose_cases(gpu_train.parse_args(["--regional"]))
    assert {c.kind for c in regional} == {"regional", "regional+graphs"}
    assert all(c.compile for c in regional)
    # the peer adapts what diffusers' example adapts
    assert gpu_peer.PEER_TARGETS == ["to_k", "to_q", "to_v", "to_out.0"]


@pytest.mark.slow
def test_train_cpu_bench_difference_mode_prints_the_ratio_to_the_peer():
    cmd = [sys.executable, "bench/train_cpu.py", "--diff", "1,2", "--json"]
    out = _run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["name"] for r in rows] == ["defaults", "peer"]
    assert all(r["steps"] == [1, 2] and len(r["seconds"]) == 2 for r in rows)
    assert "x the peer's time per step (goal <= 0.45x the example)" in out.stdout


def _bench_module(name: str):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_difference_table_gives_each_row_over_the_example_and_the_goal_line():
    train_cpu = _bench_module("train_cpu")
    rows = [
        {"name": "defaults", "s_per_step": 0.030, "wall_s_per_step": 0.031},
        {"name": "peer", "s_per_step": 0.040, "wall_s_per_step": 0.041},
        {"name": "example", "s_per_step": 0.060, "wall_s_per_step": 0.062},
    ]
    table = train_cpu.difference_table(rows)
    assert "0.50x" in table.splitlines()[1] and "0.75x" in table.splitlines()[1]
    assert "takes 0.50x the diffusers example's time per step" in table
    assert "takes 0.75x the peer's time per step" in table


def test_example_option_needs_the_difference_mode_and_a_script(tmp_path):
    out = _run([sys.executable, "bench/train_cpu.py", "--example", str(tmp_path / "none.py")])
    assert out.returncode == 2 and "--example needs --diff" in out.stderr


def test_example_dataset_carries_the_same_images_and_captions(tmp_path):
    """The example reads an imagefolder with metadata.jsonl; lorafile the .txt files: both
    train on the same pictures and captions."""
    tiny_run, example = _bench_module("tiny_run"), _bench_module("diffusers_example")
    tiny_run.make_dataset(tmp_path / "data", count=3)
    example.prepare(tmp_path)
    lines = (tmp_path / "example-data" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["file_name"] for r in rows] == ["img00.png", "img01.png", "img02.png"]
    for r in rows:
        source = tmp_path / "data" / r["file_name"]
        assert (tmp_path / "example-data" / r["file_name"]).read_bytes() == source.read_bytes()
        assert r["text"] == source.with_suffix(".txt").read_text().strip()
    assert (tmp_path / "example-model" / "unet" / "config.json").is_file()
    assert example.torchvision_pin().startswith("torchvision==0.")


def _locked_versions() -> dict[str, str]:
    import re

    text = (ROOT / "requirements" / "lock.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): ver for name, ver in pins}


def test_gpu_wheels_take_their_versions_from_the_lock():
    """bench/gpu_wheels.sh carries to the device machine exactly the versions the lock pins
    (the ones ./run and CI install), and writes no version of its own that could drift."""
    import re

    script = (ROOT / "bench" / "gpu_wheels.sh").read_text()
    assert not re.search(r"[A-Za-z]==[0-9]", script), "gpu_wheels.sh must not hard-code versions"
    out = subprocess.run(
        ["bash", "bench/gpu_wheels.sh", "--print-pins"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    pins = dict(line.split("==") for line in out.stdout.split())
    assert {"bitsandbytes", "diffusers", "pydantic", "pydantic-core", "lark"} <= set(pins)
    locked = _locked_versions()
    assert {name: locked[name] for name in pins} == pins


def test_environment_is_installed_from_the_lock():
    """./run installs with the lock as constraints: every locked package present here has the
    locked version, so what CI tests does not depend on what the registry serves today."""
    from importlib.metadata import PackageNotFoundError, version

    locked = _locked_versions()
    assert {"torch", "diffusers", "pydantic", "tomlkit"} <= set(locked)
    drift = {}
    for name, pinned in locked.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a platform-specific pin (e.g. a Windows-only helper) not used here
        if installed != pinned:
            drift[name] = (pinned, installed)
    assert not drift, f"installed versions differ from requirements/lock.txt: {drift}"


def test_step_parts_bench_prints_every_part_against_the_bare_step():
    out = _run([sys.executable, "bench/step_parts.py", "--steps", "1"])
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()[1:]
    assert len(lines) == 10 and all("ms" in line for line in lines)
    assert sum("LoRA attention+ff, fused" in line for line in lines) == 1
    assert "1.00x the bare forward + backward" in lines[1]
    assert sum("optimizer step" in line for line in lines) == 5


@pytest.mark.slow
def test_compile_bench_times_the_eager_and_the_compiled_blocks():
    """A real compile of the tiny UNet's blocks in a fresh inductor cache (about 30 s)."""
    out = _run([sys.executable, "bench/compile_cpu.py", "--only", "eager,blocks", "--steps", "1"])
    assert out.returncode == 0, out.stderr[-3000:]
    header, eager, blocks = out.stdout.splitlines()
    assert "first step s" in header and "vs eager" in header
    assert eager.split()[0] == "eager" and eager.endswith("1.00x")
    assert blocks.split()[0] == "blocks" and float(blocks.split()[1]) > float(eager.split()[1])


def test_compile_bench_table_divides_each_scope_by_the_eager_step():
    compile_cpu = _bench_module("compile_cpu")
    rows = [
        {"scope": "eager", "first_s": 0.1, "step_s": 0.040},
        {"scope": "unet", "first_s": 90.0, "step_s": 0.018},
    ]
    lines = compile_cpu.table(rows, sdxl=False).splitlines()
    assert lines[1].split() == ["eager", "0.1", "40.00", "1.00x"]
    assert lines[2].split() == ["unet", "90.0", "18.00", "0.45x"]
    assert "s/step wall" in compile_cpu.table(rows, sdxl=True)
