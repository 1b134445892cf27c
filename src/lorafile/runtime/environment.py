"""What the runtime needs from the process: no network, and the `train` extra installed.

No lorafile command downloads anything (models are local folders or files, loaded with
`local_files_only`). Some libraries still reach out on their own: bitsandbytes, when it is
imported on a CPU with AVX512-BF16, asks the `kernels` package for a CPU 4-bit kernel from the
Hugging Face Hub (`kernels-community/quantization-bitsandbytes`); offline that prints "could
not verify publisher trust status" at every `train`. `stay_offline` switches the Hub client to
offline mode (HF_HUB_OFFLINE, read once when huggingface_hub is imported, so it is set when
lorafile.runtime is imported, before any of those libraries) and drops the two log lines the
failed lookup still writes (lorafile uses bitsandbytes only for its 8-bit optimizers, never the
4-bit kernel). A value the user set for HF_HUB_OFFLINE is kept; when lorafile sets it, it says
so in LORAFILE_SET_HUB_OFFLINE, so that a hub model named in a recipe can still be downloaded
(`compiler.hub.hub_offline` honours only the user's setting; runtime/models/hub.py lifts
lorafile's own for the download).

`require_train_extra` turns a missing torch/diffusers/... into T569 naming the extra to install,
instead of a ModuleNotFoundError traceback. Torch-free: it only looks the packages up.
"""

from __future__ import annotations

import importlib
import logging
import os

from lorafile.compiler.diagnostics import Diagnostic, DiagnosticError

TRAIN_EXTRA = {
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "peft": "peft",
    "accelerate": "accelerate",
    "safetensors": "safetensors",
    "PIL": "Pillow",
    "numpy": "numpy",
}
"""Import name -> distribution name of the packages `lorafile train` cannot start without
(pyproject.toml's `train` extra; optimizer and sampler packages have their own T570/T575)."""
INSTALL_TRAIN = 'pip install "lorafile[train]"'
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
SET_BY_LORAFILE = "LORAFILE_SET_HUB_OFFLINE"
_KERNEL_LOOKUP_LOGS = {
    # logger name -> the start of the message it writes for the failed kernel lookup
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "kernels._internals.hf_hub": "Skipping publisher trust check",
}


class _DropKernelLookup(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def stay_offline() -> None:
    """Hub clients offline (unless the user said otherwise) and the kernel lookup's noise
    dropped; idempotent. See the module docstring."""
    if "HF_HUB_OFFLINE" not in os.environ:
        os.environ[SET_BY_LORAFILE] = "1"  # inherited by DDP workers with the setting itself
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    for name, prefix in _KERNEL_LOOKUP_LOGS.items():
        logger = logging.getLogger(name)  # the same object the library gets when it imports
        if not any(isinstance(f, _DropKernelLookup) for f in logger.filters):
            logger.addFilter(_DropKernelLookup(prefix))


def missing_train_packages() -> list[str]:
    """Distribution names of the `train` extra's packages that cannot be imported."""
    missing = []
    for module, distribution in TRAIN_EXTRA.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    return missing


def train_extra_missing(packages: list[str], command: str = "train") -> DiagnosticError:
    """T569: the `train` extra (or part of it) is not installed."""
    return DiagnosticError(
        [
            Diagnostic(
                code="T569",
                message=f"`lorafile {command}` needs the `train` extra, and "
                f"{', '.join(packages)} {'is' if len(packages) == 1 else 'are'} not installed.",
                help=f"install it with: {INSTALL_TRAIN}",
            )
        ]
    )


def choice_needs_package(
    code: str, what: str, name: str, package: str, instead: str, why: str = ""
) -> DiagnosticError:
    """T570 / T575: a recipe choice (`what` `name`: "optimizer prodigy", "sampler dpm_sde")
    needs `package`, which is not installed; `instead` is a choice that needs nothing more."""
    detail = f" ({why})" if why else ""
    return DiagnosticError(
        [
            Diagnostic(
                code=code,
                message=f"The {what} `{name}` needs the package `{package}`, which is not "
                f"installed{detail}.",
                help=f"install it with `pip install {package}`, or choose `{what} {instead}`",
            )
        ]
    )


def require_train_extra(command: str = "train") -> None:
    """Raise T569 when a package of the `train` extra is missing (imports them all: the
    trainer needs them next anyway)."""
    missing = missing_train_packages()
    if missing:
        raise train_extra_missing(missing, command)


def as_missing_extra(err: ModuleNotFoundError, command: str = "train") -> DiagnosticError | None:
    """T569 for a ModuleNotFoundError of a `train` extra package met later, else None."""
    top = (err.name or "").split(".")[0]
    if top not in TRAIN_EXTRA:
        return None
    return train_extra_missing([TRAIN_EXTRA[top]], command)
