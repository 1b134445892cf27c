"""The GPU catalog: memory per device, as the vendors state it, matched forgivingly.

Vendors write "24 GB" for GDDR/HBM cards, and the cards really hold 24 GiB (nvidia-smi shows
24564 MiB of 24576 on an RTX 4090), so sizes here are GiB (2**30 bytes). The driver and the
ECC reservation keep a little of it; the VRAM model counts the CUDA context separately
(compiler/vram.py), so the catalog states the full size.

Apple silicon shares memory between CPU and GPU. macOS lets the GPU wire about two thirds of
unified memory on machines up to 36 GB and about three quarters above
(`recommendedMaxWorkingSetSize`); `budget_bytes` applies that fraction, which is an estimate.

Matching (`lookup`) ignores case, spaces, dashes and the words NVIDIA, GeForce, RTX, Quadro,
Tesla and Apple, so `4090`, `rtx4090` and `NVIDIA GeForce RTX 4090` all find the RTX 4090.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    """One device: its display name, vendor and memory."""

    name: str
    vendor: str
    memory_gib: float
    unified: bool = False
    """Apple silicon: CPU and GPU share `memory_gib`."""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def budget_bytes(self) -> int:
        """What training may use: the whole card, or the GPU's share of unified memory."""
        if not self.unified:
            return self.memory_bytes
        fraction = 2 / 3 if self.memory_gib <= 36 else 3 / 4
        return int(self.memory_bytes * fraction)


def _nvidia(names_and_sizes: str) -> list[Gpu]:
    """Parse `"RTX 4090=24; RTX 4080=16"` into Gpu rows (keeps the table compact)."""
    rows = []
    for item in names_and_sizes.split(";"):
        name, size = item.strip().rsplit("=", 1)
        rows.append(Gpu(name.strip(), "NVIDIA", float(size)))
    return rows


# NVIDIA product pages / datasheets. Where a model shipped with two memory sizes, the plain
# name is the original launch size and the other is named with its size (`RTX 3060 8GB`).
_GEFORCE_20 = "RTX 2060=6; RTX 2060 12GB=12; RTX 2060 Super=8; RTX 2070=8; RTX 2070 Super=8; RTX 2080=8; RTX 2080 Super=8; RTX 2080 Ti=11; Titan RTX=24"
_GEFORCE_30 = "RTX 3050=8; RTX 3050 6GB=6; RTX 3060=12; RTX 3060 8GB=8; RTX 3060 Ti=8; RTX 3070=8; RTX 3070 Ti=8; RTX 3080=10; RTX 3080 12GB=12; RTX 3080 Ti=12; RTX 3090=24; RTX 3090 Ti=24"
_GEFORCE_40 = "RTX 4060=8; RTX 4060 Ti=8; RTX 4060 Ti 16GB=16; RTX 4070=12; RTX 4070 Super=12; RTX 4070 Ti=12; RTX 4070 Ti Super=16; RTX 4080=16; RTX 4080 Super=16; RTX 4090=24; RTX 4090 D=24"
_GEFORCE_50 = "RTX 5050=8; RTX 5060=8; RTX 5060 Ti=16; RTX 5060 Ti 8GB=8; RTX 5070=12; RTX 5070 Ti=16; RTX 5080=16; RTX 5090=32"
_WORKSTATION = "RTX A2000=6; RTX A2000 12GB=12; RTX A4000=16; RTX A4500=20; RTX A5000=24; RTX A5500=24; RTX A6000=48; RTX 2000 Ada=16; RTX 4000 SFF Ada=20; RTX 4000 Ada=20; RTX 4500 Ada=24; RTX 5000 Ada=32; RTX 6000 Ada=48; RTX PRO 6000 Blackwell=96"
_DATACENTER = "T4=16; V100=16; V100 32GB=32; A10=24; A10G=24; A40=48; L4=24; L40=48; L40S=48; A100 40GB=40; A100 80GB=80; H100=80; H100 NVL=94; H200=141"

# Apple silicon unified-memory presets (apple.com tech specs); the name carries the size.
_APPLE_SIZES = {
    "M1": (8, 16),
    "M1 Pro": (16, 32),
    "M1 Max": (32, 64),
    "M1 Ultra": (64, 128),
    "M2": (8, 16, 24),
    "M2 Pro": (16, 32),
    "M2 Max": (32, 64, 96),
    "M2 Ultra": (64, 128, 192),
    "M3": (8, 16, 24),
    "M3 Pro": (18, 36),
    "M3 Max": (36, 48, 64, 96, 128),
    "M3 Ultra": (96, 256, 512),
    "M4": (16, 24, 32),
    "M4 Pro": (24, 48, 64),
    "M4 Max": (36, 48, 64, 128),
}


def _apple() -> list[Gpu]:
    return [
        Gpu(f"{chip} {size}GB", "Apple", float(size), unified=True)
        for chip, sizes in _APPLE_SIZES.items()
        for size in sizes
    ]


CATALOG: tuple[Gpu, ...] = tuple(
    _nvidia(_GEFORCE_20)
    + _nvidia(_GEFORCE_30)
    + _nvidia(_GEFORCE_40)
    + _nvidia(_GEFORCE_50)
    + _nvidia(_WORKSTATION)
    + _nvidia(_DATACENTER)
    + _apple()
)

# Other spellings people use for the same card.
_ALIASES = {
    "a100": "A100 40GB",
    "a10040gb": "A100 40GB",
    "a10080gb": "A100 80GB",
    "h100sxm": "H100",
    "h100pcie": "H100",
    "h10080gb": "H100",
    "h200141gb": "H200",
    "l40s48gb": "L40S",
    "6000ada": "RTX 6000 Ada",
    "5000ada": "RTX 5000 Ada",
    "4090d": "RTX 4090 D",
}

_NOISE = re.compile(r"nvidia|geforce|rtx|quadro|tesla|apple|graphics|gpu|[^a-z0-9]")


def normalize(name: str) -> str:
    """The matching key of a GPU name: `NVIDIA GeForce RTX 4090` -> `4090`."""
    return _NOISE.sub("", name.lower())


def _index() -> dict[str, Gpu]:
    index = {normalize(gpu.name): gpu for gpu in CATALOG}
    by_name = {gpu.name: gpu for gpu in CATALOG}
    index.update({alias: by_name[target] for alias, target in _ALIASES.items()})
    return index


_INDEX = _index()


def find(name: str) -> Gpu | None:
    """The catalog entry for `name`, or None. A trailing `24GB` that names the standard size
    of a card is accepted too (`RTX 4090 24GB`)."""
    key = normalize(name)
    if key in _INDEX:
        return _INDEX[key]
    sized = re.fullmatch(r"(.+?)(gb|gib|g)", key)
    if not sized:
        return None
    stem = sized.group(1)
    for cut in range(1, len(stem)):
        gpu = _INDEX.get(stem[:cut])
        size = stem[cut:]
        if gpu is not None and size.isdigit() and gpu.memory_gib == float(size):
            return gpu
    return None


def suggestions(name: str, limit: int = 3) -> list[str]:
    """Catalog names close to an unknown `name`, best first."""
    key = normalize(name)
    keys = difflib.get_close_matches(key, list(_INDEX), n=limit * 2, cutoff=0.5)
    names: list[str] = []
    for k in keys:
        if _INDEX[k].name not in names:
            names.append(_INDEX[k].name)
    if not names and key:
        names = [gpu.name for gpu in CATALOG if key in normalize(gpu.name)]
    return names[:limit]
