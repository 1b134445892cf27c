"""Project-wide checks: every diagnostic code is documented, the style gate is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = re.compile(r'"([RLVTIFDE]\d{3})"')


def codes_in_source() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "src" / "lorafile").rglob("*.py"):
        found |= set(CODE.findall(path.read_text()))
    return found


def codes_documented() -> set[str]:
    text = (ROOT / "docs" / "diagnostics.md").read_text()
    return set(re.findall(r"^#+ *`?([RLVTIFDE]\d{3})", text, flags=re.M))


def test_every_diagnostic_code_is_documented():
    used = codes_in_source()
    assert len(used) > 100
    missing = sorted(used - codes_documented())
    assert not missing, f"codes raised but not in docs/diagnostics.md: {missing}"


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: `pip install -e .[test]` installs it")
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [ruff, *command, "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_readme_documents_every_command():
    from lorafile.cli import command_modules

    readme = (ROOT / "README.md").read_text()
    for module in command_modules():
        name = module.rstrip("_")
        assert f"lorafile {name}" in readme, f"README does not mention `lorafile {name}`"
