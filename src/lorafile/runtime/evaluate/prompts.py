"""The evaluation prompt set: strong, adjacent and free prompts, from a file or a recipe.

The seed article's test set has three groups: prompts that should activate the concept
strongly (the trigger with the subject it was trained on), adjacent prompts (the trigger in a
context it never saw: does it generalise or break?) and free prompts (no trigger: does the
concept bleed into them?). The file format, one prompt a line under a group header:

    # strong
    zqx, a red circle
    # adjacent
    zqx, a city street at night
    # free
    a red circle

Blank lines and other `#` lines are comments. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, Span, did_you_mean

GROUPS = ("strong", "adjacent", "free")
ADJACENT_CONTEXTS = (
    "a city street at night",
    "a bowl of fruit on a wooden table",
    "an astronaut floating in space",
)
"""Contexts far from most training sets, for the default adjacent prompts."""
MAX_SUBJECTS = 4
"""Subjects in the default set: 4 strong, 3 adjacent, 4 free prompts at most."""
_HEADER = re.compile(r"^#\s*(\w+)\s*$")


@dataclass(frozen=True)
class Prompt:
    """One row of the grid. `seed` is fixed per prompt: every checkpoint and strength of this
    row starts from the same noise."""

    text: str
    group: str
    seed: int


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[Prompt, ...]

    def of(self, group: str) -> list[int]:
        """Row indices of one group."""
        return [i for i, p in enumerate(self.prompts) if p.group == group]

    def to_dict(self) -> list[dict]:
        return [{"text": p.text, "group": p.group, "seed": p.seed} for p in self.prompts]


def seeded(groups: dict[str, list[str]], seed: int) -> PromptSet:
    """Prompts in group order (strong, adjacent, free), prompt i seeded `seed + i`."""
    texts = [(t, g) for g in GROUPS for t in groups.get(g, [])]
    return PromptSet(tuple(Prompt(t, g, seed + i) for i, (t, g) in enumerate(texts)))


def parse_prompt_file(text: str, file: str = "<prompts>") -> dict[str, list[str]]:
    """The groups of a prompt-set file; every problem at once as E903 (with line and column)."""
    bag = DiagnosticBag(file=file, source=text)
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    current = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = _HEADER.match(line)
        if header and header.group(1).lower() in GROUPS:
            current = header.group(1).lower()
        elif header and _looks_like_header(header.group(1)):
            bag.error(
                "E903",
                f"Unknown prompt group `{header.group(1)}`.{did_you_mean(header.group(1), GROUPS)}",
                "the groups are `# strong`, `# adjacent` and `# free`",
                Span(number, raw.index("#") + 1),
            )
        elif line and not line.startswith("#"):
            if current is None:
                bag.error(
                    "E903",
                    "A prompt comes before any group header.",
                    "start the file with `# strong` (or `# adjacent`, `# free`)",
                    Span(number, raw.index(line[0]) + 1),
                )
            else:
                groups[current].append(line)
    if not bag.has_errors and not any(groups.values()):
        bag.error(
            "E903", "The prompt file holds no prompt.", "write one prompt a line under `# strong`"
        )
    bag.raise_if_errors()
    return groups


def _looks_like_header(word: str) -> bool:
    """A lone word after `#` close to a group name is a misspelt header, not a comment."""
    return bool(did_you_mean(word.lower(), GROUPS))


def read_prompt_file(path: Path, seed: int) -> PromptSet:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        bag = DiagnosticBag()
        bag.error("E903", f"Cannot read the prompt file `{path}`: {err}.", "pass a UTF-8 text file")
        raise DiagnosticError(bag.items) from err
    return seeded(parse_prompt_file(text, str(path)), seed)


def strip_trigger(prompt: str, trigger: str) -> str:
    """The prompt without the trigger word (and the comma or space that followed it)."""
    text = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)[,\s]*", "", prompt).strip(" ,")
    return text


def default_groups(trigger: str | None, subjects: list[str]) -> dict[str, list[str]]:
    """The default set: `subjects` (the recipe's sample prompts, or captions) with the trigger
    as strong, the trigger in ADJACENT_CONTEXTS as adjacent, the subjects alone as free.
    Without a trigger every subject is free: only the effect and diversity can be measured."""
    bare: list[str] = []
    for s in subjects:
        text = strip_trigger(s, trigger) if trigger else s.strip()
        if text and text not in bare and len(bare) < MAX_SUBJECTS:
            bare.append(text)
    if not trigger:
        return {"strong": [], "adjacent": [], "free": bare}
    strong = [f"{trigger}, {s}" for s in bare] or [trigger]
    adjacent = [f"{trigger}, {c}" for c in ADJACENT_CONTEXTS]
    return {"strong": strong, "adjacent": adjacent, "free": bare}


def no_prompts_error() -> DiagnosticError:
    bag = DiagnosticBag()
    bag.error(
        "E904",
        "There is no prompt set to evaluate with: no --prompts file, and no recipe with a "
        "trigger or sample prompts.",
        "pass --prompts FILE (see docs/eval.md for the format), or --trigger WORD",
    )
    return DiagnosticError(bag.items)
