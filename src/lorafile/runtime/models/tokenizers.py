"""The byte-level CLIP tokenizers of the tiny model: 256 byte symbols, their end-of-word forms,
BOS and EOS. Built in memory (no vocabulary download); a single file saved with the tiny model
records `byte-level` in its metadata so the SDXL loader rebuilds them from here."""

from __future__ import annotations

BOS_ID = 512
EOS_ID = 513
VOCAB_SIZE = 514


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2/CLIP convention):
    printable Latin-1 bytes map to themselves, the rest to code points from 256 up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    symbols = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def byte_level_vocab() -> dict[str, int]:
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = BOS_ID
    vocab["<|endoftext|>"] = EOS_ID
    return vocab


def build_tokenizers():
    """Two CLIPTokenizers over the byte-level vocabulary, model_max_length 77 (without it the
    scripts' padding="max_length" fails). The second pads with "!" as SDXL's tokenizer_2 does."""
    from transformers import CLIPTokenizer

    first = CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=77)
    second = CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=77, pad_token="!")
    return first, second
