"""How fast the compile path answers, and proof that it never imports torch.

Runs each compile-path command on the shared inputs in fresh processes (as a user would) and
prints the median wall time per command, next to the time of a bare `python -c pass` measured in
the same run, so the ratio survives a noisy shared machine.

    .venv/bin/python bench/cli_latency.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HEAVY = ("torch", "diffusers", "transformers", "peft")
PROBE = (
    "import sys, runpy; sys.argv = ['lorafile'] + sys.argv[1:];\n"
    "try:\n    runpy.run_module('lorafile', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
    "print('HEAVY:' + ','.join(heavy), file=sys.stderr)\n"
)


def commands(out: Path) -> dict[str, list[str]]:
    recipe = str(SHARED / "recipes" / "character_ohwx.recipe")
    kohya = str(SHARED / "configs" / "kohya" / "seed_style_lora.toml")
    return {
        "check": ["check", recipe],
        "fmt": ["fmt", recipe],
        "lint": ["lint", recipe],
        "compile kohya": ["compile", recipe, "--target", "kohya", "-o", str(out / "k")],
        "compile simpletuner": ["compile", recipe, "--target", "simpletuner", "-o", str(out / "s")],
        "compile native": ["compile", recipe, "--target", "native", "-o", str(out / "n")],
        "import kohya": ["import", "kohya", kohya],
        "migrate": ["migrate", kohya, "--to", "simpletuner", "-o", str(out / "m"), "--allow-lossy"],
    }


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    heavy = [ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY:")]
    return elapsed, heavy[-1][6:] if heavy else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    baseline = statistics.median(
        timed([sys.executable, "-c", "pass"])[0] for _ in range(args.repeat)
    )
    print(f"{'command':<22}{'median s':>10}{'x python':>10}  heavy modules imported")
    print(f"{'python -c pass':<22}{baseline:>10.3f}{1.0:>10.1f}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in commands(Path(tmp)).items():
            runs = [timed([sys.executable, "-c", PROBE, *argv]) for _ in range(args.repeat)]
            median = statistics.median(t for t, _ in runs)
            heavy = runs[-1][1] or "none"
            worst = max(worst, median)
            print(f"{name:<22}{median:>10.3f}{median / baseline:>10.1f}  {heavy}")
    print(f"slowest command: {worst:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
