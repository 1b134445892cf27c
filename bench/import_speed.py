"""How long `lorafile import` takes on very large trainer configs (issue 12 §3).

A kohya config with thousands of unknown keys was super-linear (2k keys 1 s, 8k 6.6 s, 110k never
finished: a "did you mean" lookup per key and the source split once per diagnostic), and a 10 MB
SimpleTuner JSON took 81 s. Each case runs `lorafile import` in a fresh process, as a user would,
and prints its wall time (a time-out shows as `> N s`). `--src` times another checkout's `src`
(e.g. the commit before the fix) on the same inputs.

    .venv/bin/python bench/import_speed.py [--timeout 120] [--src OTHER/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KOHYA = ROOT / "tests" / "fixtures" / "kohya" / "01_seed_style_lora.toml"
SIMPLETUNER = ROOT / "tests" / "fixtures" / "simpletuner" / "json_plain_keys"
TEN_MB = 10_000_000


def kohya_unknown_keys(folder: Path, count: int) -> Path:
    """The seed kohya config plus `count` keys sd-scripts does not have."""
    keys = "".join(f"unknown_setting_{i:06d}_x = {i}\n" for i in range(count))
    path = folder / f"kohya_{count}.toml"
    path.write_text("[extra]\n" + keys + "\n" + KOHYA.read_text(encoding="utf-8"), "utf-8")
    return path


def simpletuner_unknown_keys(folder: Path, size: int = TEN_MB) -> Path:
    """A SimpleTuner config.json of about `size` bytes: its settings plus unknown keys."""
    out = folder / "st_keys"
    out.mkdir()
    config = json.loads((SIMPLETUNER / "config.json").read_text(encoding="utf-8"))
    per_key = len(json.dumps({"unknown_setting_000000": "value"})) - 1
    config |= {f"unknown_setting_{i:06d}": "value" for i in range(size // per_key)}
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (out / "multidatabackend.json").write_text(
        (SIMPLETUNER / "multidatabackend.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return out


def simpletuner_many_datasets(folder: Path, size: int = TEN_MB) -> Path:
    """A SimpleTuner config whose multidatabackend.json is about `size` bytes of datasets."""
    out = folder / "st_datasets"
    out.mkdir()
    (out / "config.json").write_text(
        (SIMPLETUNER / "config.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    entries = json.loads((SIMPLETUNER / "multidatabackend.json").read_text(encoding="utf-8"))
    image, embeds = entries[0], entries[1]
    per_entry = len(json.dumps(image)) + 40
    datasets = [
        image | {"id": f"d{i}", "instance_data_dir": f"data/{i}", "cache_dir_vae": f"vae/{i}"}
        for i in range(size // per_entry)
    ]
    text = json.dumps([*datasets, embeds])
    (out / "multidatabackend.json").write_text(text, encoding="utf-8")
    return out


def timed(src: Path, args: list[str], timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "lorafile", *args]
    start = time.perf_counter()
    try:
        subprocess.run(command, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"> {timeout:.0f} s"
    return f"{time.perf_counter() - start:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = [
            (f"kohya, {n:,} unknown keys", ["import", "kohya", kohya_unknown_keys(folder, n)])
            for n in (2_000, 8_000, 110_000)
        ]
        st_keys = simpletuner_unknown_keys(folder)
        st_sets = simpletuner_many_datasets(folder)
        cases += [
            ("SimpleTuner config.json, 10 MB of unknown keys", ["import", "simpletuner", st_keys]),
            ("SimpleTuner multidatabackend.json, 10 MB", ["import", "simpletuner", st_sets]),
        ]
        print(f"lorafile from {args.src}")
        for label, argv in cases:
            given = Path(argv[2])
            files = list(given.iterdir()) if given.is_dir() else [given]
            size = sum(p.stat().st_size for p in files)
            print(f"  {label:<50} {size / 1e6:6.1f} MB  {timed(args.src, argv, args.timeout)}")


if __name__ == "__main__":
    main()
