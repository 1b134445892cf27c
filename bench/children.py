"""Run one benchmark case in a fresh process and read back its result row.

Each case of bench/train_cpu.py and bench/compile_cpu.py runs in a process of its own, so that
peak memory and first-step times are per case; the child prints its result as one line
`BENCH {json}` on stdout, and the parent reads that line back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

PREFIX = "BENCH "


def print_row(row: dict) -> None:
    """The child's side: its result, as the one line the parent looks for."""
    print(PREFIX + json.dumps(row), flush=True)


def run_child(args: list[str], what: str, threads: int = 1) -> dict:
    """Run this Python on `args` with `threads` torch threads and an empty inductor cache of
    its own (a compiling case then pays its whole compile in every run, so a difference of two
    runs cancels it); its result row, or exit naming `what` with the end of its stderr."""
    with tempfile.TemporaryDirectory(prefix="lorafile-inductor-") as cache:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCHINDUCTOR_CACHE_DIR": cache}
        cmd = [sys.executable, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(PREFIX)), None)
    if line is None:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len(PREFIX) :])
