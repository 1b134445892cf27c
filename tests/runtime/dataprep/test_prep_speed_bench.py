"""bench/prep_speed.py runs (a smoke test with three images; the timing itself is not tested)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_prep_speed_bench_prints_a_rate():
    result = subprocess.run(
        [sys.executable, "bench/prep_speed.py", "-n", "3", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["images"] == 3 and row["images_per_s"] > 0 and row["problems"] == 0
