"""Shell text for the launch scripts the backends write (kohya and SimpleTuner `train.sh`).

A recipe's strings come from anyone: a recipe someone shared, or a foreign kohya / SimpleTuner
config read by `import`, `migrate` and `compile` (issue 12: a recipe name with a line break
became a command in SimpleTuner's train.sh). So a script holds recipe text in exactly two
forms, both inert under bash:

- a command word, through `quote` (shlex.quote: single quotes, nothing expands);
- free text in a comment, through `comment`, which keeps it on that one line.

Deliberate expansions of the script's own variables (`"$SD_SCRIPTS/..."`) are `Expansion`
words, written by this package, never built from recipe text.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable


class Expansion(str):
    """A word the script must expand at run time (its own variables), written unquoted."""


def quote(word: object) -> str:
    """One shell word that stands for `word` exactly (an `Expansion` is kept as written)."""
    if isinstance(word, Expansion):
        return str(word)
    return shlex.quote(str(word))


def command(words: Iterable[object], continuation: Iterable[object] = ()) -> str:
    """A command line from words, each quoted; `continuation` goes on a `\\`-joined next line."""
    line = " ".join(quote(w) for w in words)
    rest = " ".join(quote(w) for w in continuation)
    return f"{line} \\\n  {rest}" if rest else line


def inline(text: str) -> str:
    """`text` fit for one comment line: as written when every character is printable, else
    as a JSON string literal (line breaks, control and format characters escaped, so nothing
    ends the comment and nothing reaches a terminal raw when the script is printed)."""
    return text if text.isprintable() else json.dumps(text)


def comment(text: str) -> str:
    """A `#` comment line holding `text`."""
    return "# " + inline(text)
