"""Issue 12 §5: no lorafile command reaches for the network. bitsandbytes, imported on a CPU
with AVX512-BF16, asked the `kernels` package for a kernel repository on the Hugging Face Hub
and printed "could not verify publisher trust status" at every `train`."""

from __future__ import annotations

import os

from hardening_runs import lorafile_subprocess, tiny_recipe_file
from hardening_runs import one_thread as one_thread  # autouse fixture

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
"""What a user's shell normally leaves unset (lorafile sets them in its own process)."""
NO_NETWORK = """
import socket

def refuse(*args, **kwargs):
    import sys, traceback
    sys.stderr.write("NETWORK ATTEMPT " + repr(args) + "\\n")
    traceback.print_stack(file=sys.stderr)
    raise OSError("the test forbids the network")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
"""


def test_train_prints_no_kernel_lookup_and_opens_no_connection(tiny_sdxl_dir, tmp_path):
    recipe = tiny_recipe_file(tiny_sdxl_dir, tmp_path)  # adamw8bit: bitsandbytes is imported
    done = lorafile_subprocess("train", str(recipe), prelude=_unset(OFFLINE_ENV) + NO_NETWORK)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "could not verify publisher trust status" not in output
    assert "kernels-community" not in output and "gemm_4bit" not in output
    assert "NETWORK ATTEMPT" not in output
    assert (tmp_path / "out" / "tiny.safetensors").is_file()


def _unset(names) -> str:
    """Python source that removes `names` from the environment before lorafile is imported:
    this test process has them set (it imported lorafile.runtime), a user's shell does not."""
    return "import os\n" + "".join(f"os.environ.pop({n!r}, None)\n" for n in names)


def test_a_users_own_offline_setting_is_kept(monkeypatch):
    from lorafile.runtime.environment import stay_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    stay_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "0"
