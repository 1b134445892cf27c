"""The torch-free CLIP BPE tokenizer against transformers' CLIPTokenizer on the same vocabulary."""

from __future__ import annotations

import gzip
import json

from lorafile.compiler import clip_bpe

WORDS = [
    "wtrclr", "ohwx", "sks", "inkst", "a photo of ohwx woman, smiling!", "xyz123",
    "it's zxqv_abc-def", "Ünïcödé café", "watercolor lighthouse", "  spaced   out  ",
]  # fmt: skip


def test_vocab_is_found_without_importing_open_clip():
    import sys

    assert clip_bpe.vocab_path() is not None
    assert "open_clip" not in sys.modules


def test_matches_transformers_clip_tokenizer(tmp_path):
    import transformers

    with gzip.open(clip_bpe.vocab_path(), "rt", encoding="utf-8") as f:
        merges = [tuple(x.split()) for x in f.read().split("\n")[1 : clip_bpe.N_MERGES + 1]]
    alphabet = list(clip_bpe._byte_alphabet().values())
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    lines = "\n".join(" ".join(m) for m in merges)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + lines + "\n")
    reference = transformers.CLIPTokenizer(
        str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
    )
    ours = clip_bpe.load()
    for text in WORDS:
        assert ours.tokens(text) == reference.tokenize(text), text


def test_known_token_counts():
    bpe = clip_bpe.load()
    assert bpe.tokens("ohwx") == ["ohwx</w>"]
    assert len(bpe.tokens("wtrclr")) == 4
    assert bpe.merge_rank("dog</w>") < bpe.merge_rank("ohwx</w>")
