"""The caption checks of `lorafile prep`: missing, empty, trigger, length, concept phrases.

Captions are read with the trainer's own rule (runtime/train/data.py `caption_for`: the sidecar with
the recipe's extension, whitespace collapsed). Lengths are counted with CLIP's BPE
(compiler/clip_bpe.py), the tokenizer both SDXL text encoders use: 77 positions, of which the
start and end tokens take two.
"""

from __future__ import annotations

import re
from collections import Counter

from lorafile.compiler.diagnostics import Severity
from lorafile.runtime.dataprep.settings import Entry, PrepSettings, Problem, problem
from lorafile.runtime.train.data import CaptionError, caption_for, with_trigger

CLIP_CONTENT_TOKENS = 75
"""CLIP reads 77 tokens: start, 75 of the caption, end. kohya's `max_token_length` 150/225
reads more in chunks; the native trainer and SimpleTuner's SDXL path read 77."""
PHRASE_SHARE = 0.5
"""A phrase in at least half of the captions is a phrase the dataset repeats."""
PHRASE_MIN_CAPTIONS = 3
PHRASE_WORDS = (2, 5)
"""Phrases of 2 to 5 words, at least two of them not function words."""
FUNCTION_WORDS = frozenset(
    {
        "a", "an", "the", "of", "in", "on", "at", "to", "with", "and", "or", "by", "for",
        "from", "its", "it", "is", "are", "this", "that", "as", "into", "over", "under",
        "near", "his", "her", "their", "there",
    }
)  # fmt: skip
WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*", re.UNICODE)


def read_caption(entry: Entry, settings: PrepSettings) -> None:
    """Fill the entry's caption and caption file as the trainer reads them."""
    if settings.captions == "trigger":
        return
    try:
        text, sidecar = caption_for(entry.path, settings.captions)
    except CaptionError as err:  # the trainer refuses it too (T-level scan error): report it
        entry.caption_file, entry.caption_error = err.path, err.reason
        return
    entry.caption_file = sidecar
    # `captions filename` has no sidecar: the name is the caption.
    entry.caption = text if sidecar is None or sidecar.is_file() else None


def check_caption(entry: Entry, settings: PrepSettings, bpe) -> None:
    """no_caption, empty_caption, no_trigger and caption_too_long for one image."""
    if settings.captions == "trigger":
        return
    if entry.caption_error is not None:
        entry.problems.append(_unreadable(entry))
        return
    if entry.caption is None:
        entry.problems.append(_missing(entry, settings))
        return
    if not entry.caption:
        entry.problems.append(
            problem(
                "empty_caption",
                f"The caption file `{entry.caption_file.name}` is empty: the image trains on "
                "the trigger alone.",
                "describe what the image shows, or run `lorafile caption DIR --overwrite`",
                Severity.WARNING,
                entry.path,
            )
        )
        return
    trigger_problem = _trigger(entry, settings)
    if trigger_problem is not None:
        entry.problems.append(trigger_problem)
    if bpe is not None:
        _length(entry, settings, bpe)


def _missing(entry: Entry, settings: PrepSettings) -> Problem:
    return problem(
        "no_caption",
        f"The image has no caption file (`{entry.caption_file.name}`): it trains on the "
        "trigger alone.",
        f"run `lorafile caption {settings.folder}` to write the missing captions",
        Severity.WARNING,
        entry.path,
    )


def _unreadable(entry: Entry) -> Problem:
    return problem(
        "unreadable_caption",
        f"The caption file `{entry.caption_file.name}` is {entry.caption_error}: the trainer "
        "refuses a dataset with it.",
        "save it again as UTF-8 text (e.g. `iconv -f latin1 -t utf-8`), or delete it and run "
        "`lorafile caption` to write a new one",
        Severity.ERROR,
        entry.caption_file,
    )


def starts_with_trigger(caption: str, trigger: str) -> bool:
    """The trainer's own test (runtime/train/data.py `with_trigger`), ignoring case as CLIP does."""
    return with_trigger(caption.lower(), trigger.lower()) == caption.lower()


def mentions(caption: str, trigger: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption, re.IGNORECASE) is not None


def _trigger(entry: Entry, settings: PrepSettings) -> Problem | None:
    trigger, caption = settings.trigger, entry.caption or ""
    if not trigger or starts_with_trigger(caption, trigger):
        return None
    inside = mentions(caption, trigger)
    if not settings.trigger_in_captions:
        if not inside:
            return None  # the trainer prepends the recipe's trigger: nothing is missing
        message = (
            f"The caption mentions the trigger `{trigger}` but not first; the trainer "
            "prepends it as well, so it is trained twice."
        )
        help = f"remove `{trigger}` from the caption: the recipe's trigger is prepended"
    else:
        where = "but not first" if inside else "nowhere"
        message = f"The caption mentions the trigger `{trigger}` {where}."
        help = (
            f"start the caption with `{trigger}`; `lorafile prep DIR --trigger {trigger} "
            "--fix OUT` prepends it"
        )
    return problem("no_trigger", message, help, Severity.WARNING, entry.path)


def _length(entry: Entry, settings: PrepSettings, bpe) -> None:
    text = with_trigger(entry.caption or "", settings.trigger)
    tokens = bpe.tokens(text)
    if len(tokens) <= CLIP_CONTENT_TOKENS:
        return
    cut = cut_words(text, bpe, CLIP_CONTENT_TOKENS)
    shown = " ".join(cut) if len(cut) <= 12 else " ".join([*cut[:8], "...", *cut[-3:]])
    entry.problems.append(
        problem(
            "caption_too_long",
            f"The caption is {len(tokens)} CLIP tokens; the text encoders read "
            f"{CLIP_CONTENT_TOKENS} (77 with start and end), so these words are cut off: "
            f"{shown}",
            "shorten the caption: put what matters first and drop filler",
            Severity.WARNING,
            entry.path,
        )
    )


def cut_words(text: str, bpe, keep: int) -> list[str]:
    """The words of `text` (as written) that fall past the first `keep` CLIP tokens."""
    words = text.split()
    for k in range(len(words)):
        if len(bpe.tokens(" ".join(words[: k + 1]))) > keep:
            return words[k:]
    return []


def bpe_missing(settings: PrepSettings) -> Problem:
    return problem(
        "token_count_skipped",
        "Caption lengths were not counted: CLIP's BPE vocabulary is not installed.",
        "install it with `pip install --no-deps open-clip-torch` (no torch needed)",
        Severity.INFO,
        settings.folder,
    )


def concept_phrases(entries: list[Entry], settings: PrepSettings) -> list[Problem]:
    """Phrases most captions share: often the concept named in words instead of the trigger."""
    captions = [e.caption for e in entries if e.caption and not e.rejected]
    if len(captions) < PHRASE_MIN_CAPTIONS:
        return []
    trigger = (settings.trigger or "").lower()
    counts: Counter[tuple[str, ...]] = Counter()
    for caption in captions:
        words = [w for w in WORD.findall(caption.lower()) if w != trigger]
        counts.update(set(_phrases(words)))
    need = max(PHRASE_MIN_CAPTIONS, round(len(captions) * PHRASE_SHARE))
    shared = {p: n for p, n in counts.items() if n >= need}
    maximal = [p for p in shared if not _inside_longer(p, shared)]
    maximal.sort(key=lambda p: (-shared[p], -len(p), p))
    return [_phrase_problem(p, shared[p], len(captions), settings) for p in maximal[:3]]


def _phrases(words: list[str]):
    low, high = PHRASE_WORDS
    for n in range(low, high + 1):
        for i in range(len(words) - n + 1):
            phrase = tuple(words[i : i + n])
            content = [w for w in phrase if w not in FUNCTION_WORDS]
            if len(content) >= 2 and phrase[0] not in FUNCTION_WORDS:
                yield phrase


def _inside_longer(phrase: tuple[str, ...], shared: dict) -> bool:
    n = len(phrase)
    for other, count in shared.items():
        if len(other) <= n or count != shared[phrase]:
            continue
        if any(other[i : i + n] == phrase for i in range(len(other) - n + 1)):
            return True
    return False


def _phrase_problem(phrase, count: int, total: int, settings: PrepSettings) -> Problem:
    text = " ".join(phrase)
    return problem(
        "concept_phrase",
        f'{count} of {total} captions contain "{text}". If it names the concept the trigger '
        "should carry, the LoRA ties the concept to these words instead of the trigger.",
        "describe what is present in each image (subject, setting, light), not the concept; "
        "let the trigger stand for it",
        Severity.WARNING,
        settings.folder,
    )
