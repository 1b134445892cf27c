"""Writing a `.safetensors` file one tensor at a time.

safetensors' `save_file` takes a dict of every tensor, so a merged 7 GB checkpoint would sit
in memory whole before a byte is written. The format is simple enough to stream
(https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header length
N, N bytes of JSON (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`, padded with spaces to a multiple of 8), then the tensors' bytes,
little-endian, row-major, back to back, offsets relative to the end of the header. The header
needs every name, dtype and shape up front, which a merge knows from the base file's header;
the bytes then follow in header order, one tensor in memory at a time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

# safetensors dtype names and their sizes in bytes.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
FLOAT_NAMES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def dtype_name(dtype) -> str:
    """safetensors' name of a torch dtype (`torch.float16` -> "F16")."""
    import torch

    table = {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
        torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
        torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
        torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    }  # fmt: skip
    return table[dtype]


@dataclass(frozen=True)
class Entry:
    """One tensor of the header: its name, safetensors dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def header_bytes(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    """The length prefix and JSON header for `entries`, stored back to back in this order."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}  # fmt: skip
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data start to 8 bytes
    return len(text).to_bytes(8, "little") + text


def tensor_bytes(tensor) -> memoryview:
    """The raw bytes of a CPU tensor, row-major (no copy when it is already contiguous)."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def write_streaming(path: str | os.PathLike, entries: list[Entry], tensors: Iterable,
                    metadata: dict[str, str]) -> int:  # fmt: skip
    """Write `tensors` ((name, tensor) pairs, in `entries` order) as one safetensors file.

    Each tensor is written and dropped before the next is asked for. Returns the file size.
    Raises ValueError if a tensor does not match its header entry."""
    with open(path, "wb") as out:
        out.write(header_bytes(entries, metadata))
        pending = iter(entries)
        for name, tensor in tensors:
            entry = next(pending)
            got = Entry(name, dtype_name(tensor.dtype), tuple(tensor.shape))
            if got != entry:
                raise ValueError(f"tensor {got} does not match its header entry {entry}")
            out.write(tensor_bytes(tensor))
            del tensor
        if next(pending, None) is not None:
            raise ValueError("fewer tensors than header entries")
        return out.tell()
