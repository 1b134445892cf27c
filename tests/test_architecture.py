"""The architecture rules of docs/architecture.md, checked on every run.

import-linter (contracts in pyproject.toml) checks the layers (commands -> backends -> runtime
-> compiler -> spec -> files), that no package or module is part of an import circle at any
depth (imports inside functions count: they are edges all the same), and that the compile path
never reaches torch and its kin. The AST check below adds what import-linter cannot say: outside
runtime/, only commands may import torch & co., and only inside a function."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from repo_paths import ROOT

SRC = ROOT / "src" / "lorafile"
HEAVY = {
    "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes",
    "PIL", "imagehash", "matplotlib", "numpy",
}  # fmt: skip


def lint_imports(src_root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {"PYTHONPATH": str(src_root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(exe), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_import_contracts_hold():
    out = lint_imports(ROOT / "src")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_a_new_circle_breaks_the_contracts(tmp_path):
    """The check can fail: a lazy import closing a circle (kohya.read -> kohya.load -> read)
    in a copy of the tree is reported."""
    copy = tmp_path / "lorafile"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    read = copy / "backends" / "kohya" / "read.py"
    read.write_text(
        read.read_text() + "\n\ndef _late():\n    from lorafile.backends.kohya import load\n"
    )
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "lorafile.backends.kohya" in out.stdout and ".read -> .load" in out.stdout


def heavy_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, at module level) for each import of a heavy package in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in HEAVY:
                found.append((node.lineno, name, id(node) in top_level))
    return found


def test_torch_and_kin_only_under_runtime_or_lazily_in_commands():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        part = path.relative_to(SRC).parts[0]
        if part == "runtime":
            continue
        for line, name, top in heavy_imports(path):
            if part != "commands" or top:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not problems, "\n".join(problems)
