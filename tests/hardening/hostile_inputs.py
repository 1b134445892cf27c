"""Hostile strings and a stubbed shell, shared by the issue-12 hardening tests.

`hostile_text()` draws what an attacker (or an unlucky user) can put into any string a recipe or
a foreign trainer config carries: line breaks, quotes, `$(...)`, backticks, `;`, NUL, control
and bidi characters, very long runs. Templates that would run a command write a file named
CANARY into the folder they run in, so a test asserts no CANARY exists anywhere afterwards.

`StubShell` runs a generated script with bash, with stub `accelerate`, `simpletuner`, `python`
and `python3` first on PATH; each stub records its argv (NUL-separated, one file per call).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from hypothesis import strategies as st

CANARY = "CANARY"
INJECTIONS = [
    f"x\ntouch {CANARY}\n",
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"'; touch {CANARY}; '",
    f'"; touch {CANARY}; "',
    f"x\rtouch {CANARY}",
    f"a\\\ntouch {CANARY}",
    f"${{IFS}}touch${{IFS}}{CANARY}",
    f"&& touch {CANARY} #",
    f"| touch {CANARY}",
    f"\u2028touch {CANARY}\u2029",
    "\x1b[2J\x1b[31mred\x1b[0m",
    "\u202eevil\u202c",
    "x\x00y",
    "-rf",
    "--config_file=/etc/passwd",
    "*",
    "~root",
    "a" * 300,
]
_ALPHABET = st.sampled_from(list("ab $`'\"\\;|&()<>{}*?~#!\n\r\t\x00\x1b\u2028é=-./"))


def hostile_text() -> st.SearchStrategy[str]:
    """A non-empty hostile string: a template, random shell-ish text, or both joined."""
    random = st.text(_ALPHABET, min_size=1, max_size=20)
    template = st.sampled_from(INJECTIONS)
    joined = st.tuples(random, template).map("".join)
    return st.one_of(template, random, joined)


def recipe_string(text: str) -> str:
    """`text` as a quoted recipe string (JSON escapes, which the recipe language reads)."""
    return json.dumps(text)


def names_a_file(name: str) -> bool:
    """Whether `name` may be a recipe or output name (R208/R209 reject the others)."""
    return (
        "\x00" not in name
        and "/" not in name
        and "\\" not in name
        and name.strip()
        not in (
            ".",
            "..",
        )
    )


def canaries(root: Path) -> list[Path]:
    return list(root.rglob(f"*{CANARY}*"))


class StubShell:
    """bash with recording stubs for the trainers' launchers, in an empty environment."""

    STUBS = ("accelerate", "simpletuner", "python", "python3")

    def __init__(self, root: Path):
        self.bin = root / "stub-bin"
        self.log = root / "stub-calls"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.log.mkdir(exist_ok=True)
        for name in self.STUBS:
            stub = self.bin / name
            stub.write_text(
                '#!/bin/bash\nf=$(mktemp "$STUB_LOG/call.XXXXXX")\n'
                'printf \'%s\\0\' "$(basename "$0")" "$@" > "$f"\n',
                encoding="utf-8",
            )
            stub.chmod(0o755)

    def syntax_ok(self, script: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)

    def run(self, script: Path) -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "STUB_LOG": str(self.log), "HOME": "/nowhere"}
        return subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, env=env, timeout=60
        )

    def calls(self) -> list[list[str]]:
        """argv of every stub call so far (program name first)."""
        out = []
        for path in sorted(self.log.iterdir()):
            words = path.read_bytes().split(b"\x00")[:-1]
            out.append([os.fsdecode(w) for w in words])
        return out

    def reset(self) -> None:
        for path in self.log.iterdir():
            path.unlink()
