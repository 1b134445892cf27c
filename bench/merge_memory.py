"""Peak memory of `lorafile merge --base` on a full-size SDXL single file (random weights).

Builds, in WORK (default: a temporary folder, removed afterwards):
  base.safetensors  every tensor of SDXL base 1.0 (UNet, both text encoders, VAE) under its
                    original single-file name and shape, random fp16 (6.9 GB), written one
                    tensor at a time (the names and shapes come from the architecture built on
                    PyTorch's meta device, so nothing is downloaded);
  lora.safetensors  a random rank-RANK LoRA + LoCon on every module kohya targets (attention,
                    ff, conv, both text encoders: 1052 modules);
then runs the merge in a fresh process and prints, as JSON: the process's peak resident set
(ru_maxrss), the peak of its anonymous memory (RssAnon, sampled every 10 ms: what the process
itself allocated, not the file pages it read through safetensors' memory map), the file sizes
and the wall time.

    PYTHONPATH=src python bench/merge_memory.py [--rank 8] [--dtype fp16] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = r"""
import json, resource, sys, threading, time
peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
def sample():
    while True:
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in peak:
                peak[key] = max(peak[key], int(line.split()[1]) * 1024)
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
from lorafile.runtime.lorafiles.merge import LoraSpec, merge_into_base
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.time()
dtype = sys.argv[4] if sys.argv[4] != "keep" else None
result = merge_into_base(sys.argv[1], [LoraSpec(__import__("pathlib").Path(sys.argv[2]), 0.8)], sys.argv[3], dtype)
seconds = time.time() - start
time.sleep(0.05)
print(json.dumps({
    "seconds": round(seconds, 1),
    "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "rss_after_imports_bytes": before,
    "peak_rss_anon_bytes": peak["RssAnon"],
    "peak_rss_file_bytes": peak["RssFile"],
    "weights_changed": result.weights_changed,
    "tensors": result.tensors,
    "output_bytes": result.bytes,
}))
"""


def base_entries():
    """(name, shape) of every tensor of a full-size SDXL single file, from the meta device."""
    from lorafile.runtime.models.sdxl import build_sdxl_meta, to_single_file_state

    meta = build_sdxl_meta(parts=("unet", "text_encoder", "text_encoder_2", "vae"))
    return [(k, tuple(v.shape)) for k, v in to_single_file_state(meta).items()]


def write_base(path: Path) -> int:
    import torch

    from lorafile.runtime.lorafiles.stream import Entry, write_streaming

    entries = [Entry(name, "F16", shape) for name, shape in base_entries()]
    g = torch.Generator().manual_seed(0)

    def tensors():
        for e in entries:
            yield e.name, (torch.randn(e.shape, generator=g) * 0.02).to(torch.float16)

    return write_streaming(path, entries, tensors(), {})


def write_lora(path: Path, rank: int) -> int:
    import torch
    from safetensors.torch import save_file

    from lorafile.runtime.lorafiles.keys import sdxl_keymap

    keymap, g, tensors = sdxl_keymap(), torch.Generator().manual_seed(1), {}
    for m in keymap.select(["attention", "ff", "conv"], text_encoder=True):
        name = keymap.kohya(m.component, m.path)
        k = (3, 3) if m.kind == "conv3x3" else (1, 1) if m.kind == "conv1x1" else ()
        down = torch.randn(rank, m.in_features, *k, generator=g) * 0.01
        up = torch.randn(m.out_features, rank, *((1, 1) if k else ()), generator=g) * 0.01
        tensors[f"{name}.lora_down.weight"] = down.to(torch.float16)
        tensors[f"{name}.lora_up.weight"] = up.to(torch.float16)
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dtype", default="keep", help="fp16, bf16, fp32 or keep (the base's)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the files in --work")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lorafile-merge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base, lora, out = (
        work / "base.safetensors",
        work / "lora.safetensors",
        work / "merged.safetensors",
    )
    try:
        start = time.time()
        report = {"base_bytes": write_base(base), "lora_bytes": write_lora(lora, args.rank)}
        report["build_seconds"] = round(time.time() - start, 1)
        cmd = [sys.executable, "-c", MEASURE, str(base), str(lora), str(out), args.dtype]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        report |= json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            for path in (base, lora, out):
                path.unlink(missing_ok=True)
            if args.work is None:
                work.rmdir()


if __name__ == "__main__":
    main()
