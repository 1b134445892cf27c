"""Run diffusers' own `train_text_to_image_lora_sdxl.py`, unmodified, on the tiny model: the
comparison issue 14's CPU goal names ("the diffusers example script unmodified vs `lorafile
train` at its defaults"). `bench/train_cpu.py --example SCRIPT` calls it.

The script is not part of this repository (it is diffusers' code): pass the path of
`examples/text_to_image/train_text_to_image_lora_sdxl.py` from a diffusers checkout whose
version matches the installed diffusers. It needs two packages outside lorafile's stack,
`datasets` and `torchvision`; they go into a measurement venv, `.venv-example/` (ignored by
git), which sees the project's `.venv` packages through a `.pth` file, so torch, diffusers,
peft and accelerate are the very ones lorafile runs with.

The registry's torchvision wheels are CUDA builds whose C operators cannot load next to the
CPU torch; the example uses only `torchvision.transforms`, so the venv's `sitecustomize`
skips torchvision's operator registrations (a measurement-venv setting, nothing in lorafile).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-example"
SITECUSTOMIZE = """\
# Written by bench/diffusers_example.py: PyPI's torchvision is a CUDA build whose C operators
# cannot load next to a CPU torch; the example script uses torchvision.transforms only.
import sys
import types

sys.modules.setdefault(
    "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
)
"""


def torchvision_pin() -> str:
    """torchvision's release for the installed torch: 0.(minor + 15) since torch 2.0/0.15."""
    import torch

    major, minor = (int(n) for n in torch.__version__.split("+")[0].split(".")[:2])
    if major != 2:
        raise SystemExit(f"no torchvision pairing known for torch {torch.__version__}")
    return f"torchvision==0.{minor + 15}.*"


def ensure_venv() -> Path:
    """`.venv-example/bin/python`, created and filled on first use (about a minute)."""
    python = VENV / "bin" / "python"
    if python.exists() and _imports_ok(python):
        return python
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "lorafile-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pip = [str(python), "-m", "pip", "install", "-q", "datasets", torchvision_pin()]
    subprocess.run(pip, check=True)
    if not _imports_ok(python):
        raise SystemExit(f"{VENV} cannot import datasets and torchvision.transforms")
    return python


def _imports_ok(python: Path) -> bool:
    probe = [str(python), "-c", "import datasets, torchvision.transforms"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def prepare(work: Path) -> None:
    """The tiny model as a diffusers folder and the bench's dataset as an `imagefolder`
    (`metadata.jsonl` holds the captions the `.txt` files hold for lorafile)."""
    from lorafile.runtime.models.tiny import save_tiny_sdxl

    save_tiny_sdxl(work / "example-model", as_single_file=False, seed=0)
    folder = work / "example-data"
    folder.mkdir(exist_ok=True)
    lines = []
    for image in sorted((work / "data").glob("*.png")):
        (folder / image.name).write_bytes(image.read_bytes())
        caption = image.with_suffix(".txt").read_text().strip()
        lines.append(json.dumps({"file_name": image.name, "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def run(script: Path, work: Path, steps: int, rank: int) -> dict:
    """One run of the script for `steps` steps: wall seconds and the child's CPU seconds."""
    python = ensure_venv()
    out = work / f"example-out-{steps}"
    cmd = [
        str(python), str(script),
        "--pretrained_model_name_or_path", str(work / "example-model"),
        "--train_data_dir", str(work / "example-data"),
        "--caption_column", "text",
        "--resolution", "64",
        "--train_batch_size", "1",
        "--max_train_steps", str(steps),
        "--rank", str(rank),
        "--mixed_precision", "no",
        "--seed", "0",
        "--checkpointing_steps", "1000000",
        "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not (out / "pytorch_lora_weights.safetensors").is_file():
        raise SystemExit(f"the example script failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"name": "example", "steps": steps, "seconds": seconds, "cpu_seconds": cpu}
