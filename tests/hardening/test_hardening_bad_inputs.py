"""Bad paths and damaged files given to any command: a coded diagnostic, never a traceback.

Each case here printed a Python traceback once; the fix sits in the reader or writer that should
have checked, and the test runs the command line as a user would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafile.cli import main


def _loop(folder: Path, name: str) -> Path:
    """`name` -> `name.2` -> `name`: a symlink loop (ELOOP when opened)."""
    (folder / f"{name}.2").symlink_to(folder / name)
    (folder / name).symlink_to(folder / f"{name}.2")
    return folder / name


@pytest.mark.parametrize("command", ["convert", "resize", "merge"])
def test_lora_input_that_is_a_symlink_loop_is_f710(tmp_path, capsys, command):
    loop = _loop(tmp_path, "loop.safetensors")
    out = tmp_path / "out.safetensors"
    args = {
        "convert": ["convert", str(loop), "--to", "diffusers", "-o", str(out)],
        "resize": ["resize", str(loop), "--rank", "2", "-o", str(out)],
        "merge": ["merge", str(loop), str(loop), "-o", str(out)],
    }[command]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "error[F710]" in err and "loop.safetensors" in err and "does not exist" in err, err
    assert not out.exists()
