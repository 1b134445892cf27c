"""CLIP's byte-level BPE tokenizer, small and torch-free, for the trigger-word lint (L306/L307).

SDXL's text encoders share CLIP's BPE vocabulary (49,408 tokens). The vocabulary ships with the
`open-clip-torch` package as `open_clip/bpe_simple_vocab_16e6.txt.gz`, but importing open_clip
imports torch, which the lint path must not do. So we locate the file through the import system
without importing the package (`importlib.util.find_spec`) and run the merge algorithm here. A
tokenizer library would be the right tool, but none can be imported here without torch.

Install the vocabulary without its dependencies: `pip install --no-deps open-clip-torch`
(`./run` does). Without the file, `load()` returns None and the lint rule says so.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import re
from pathlib import Path

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP uses 49152 - 256 - 2 merges of the file (the rest are never used).
N_MERGES = 49152 - 256 - 2
# Words, single digits, runs of other non-space characters (CLIP's pattern without \p classes:
# `[^\W\d_]` is "a letter" in Python's Unicode-aware `re`).
_SPLIT = re.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+""",
    re.IGNORECASE,
)


def vocab_path() -> Path | None:
    """Where open-clip-torch installed the vocabulary, without importing open_clip (torch)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / VOCAB_FILE
        if candidate.is_file():
            return candidate
    return None


def _byte_alphabet() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ClipBpe:
    """Tokenize text into CLIP BPE tokens (strings; `</w>` marks a word's end)."""

    def __init__(self, merges: list[tuple[str, str]]):
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.made_by: dict[str, int] = {}
        for i, (a, b) in enumerate(merges):
            self.made_by.setdefault(a + b, i)
        self.bytes = _byte_alphabet()

    def tokens(self, text: str) -> list[str]:
        text = re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip().lower()
        out: list[str] = []
        for word in _SPLIT.findall(text):
            chars = "".join(self.bytes[b] for b in word.encode("utf-8"))
            out += self._bpe(chars)
        return out

    def merge_rank(self, token: str) -> int | None:
        """The position of the merge that created `token` (low = frequent in CLIP's data)."""
        return self.made_by.get(token)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - a few instances, bounded cache
    def _bpe(self, chars: str) -> list[str]:
        parts = [*chars[:-1], chars[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            parts = _merge(parts, best)
        return parts


def _merge(parts: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(parts):
        if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
            merged.append(parts[i] + parts[i + 1])
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return merged


@functools.lru_cache(maxsize=1)
def load() -> ClipBpe | None:
    """The tokenizer over the installed vocabulary, or None when the file is not installed."""
    path = vocab_path()
    if path is None:
        return None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    return ClipBpe([m for m in merges if len(m) == 2])  # type: ignore[misc]
