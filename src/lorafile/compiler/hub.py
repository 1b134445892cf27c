"""Hugging Face Hub references in a recipe: `"org/name"`, `"org/name@rev"`, `"org/name/file"`.

A base model (or VAE) is named either by a local path or by a hub repository id, as kohya
sd-scripts and SimpleTuner both accept. The two overlap: `models/sdxl` could be either. The rule
is diffusers' own: a path that exists on disk is a path; otherwise text shaped like a repo id is
a hub reference. This module reads the text and looks into the local hub cache by hand (no
huggingface_hub import, no network), so the compile path (`lint`, `plan`) can tell the two apart
and say where a model is; runtime/models/hub.py resolves a reference to files for training.

Forms (one way to say each):
- `org/name`                        the repository at its default branch
- `org/name@rev`                    at a branch, tag or commit
- `org/name/sub/file.safetensors`   one file inside the repository (optionally `org/name@rev/...`)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lorafile import files
from lorafile.compiler.dataset_count import resolve

# Hub repo ids: letters, digits, `-`, `_`, `.`; neither part starts with `.` or `-`.
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF = re.compile(
    rf"^(?P<org>{_PART})/(?P<name>{_PART})(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9._-]*))?"
    r"(?:/(?P<file>[^@\\]+))?$"
)
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
"""A second path part ending in one of these is a local file (`models/sdxl.safetensors`)."""


@dataclass(frozen=True)
class HubRef:
    """A parsed hub reference; `str()` gives back the recipe's spelling."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        text = self.repo_id + (f"@{self.revision}" if self.revision else "")
        return text + (f"/{self.filename}" if self.filename else "")

    def download_command(self) -> str:
        """The `hf` CLI command that puts this reference in the local cache."""
        words = ["hf", "download", self.repo_id]
        words += [self.filename] if self.filename else []
        words += ["--revision", self.revision] if self.revision else []
        return " ".join(words)


def parse_hub_ref(text: str) -> HubRef | None:
    """The hub reference `text` spells, or None when it can only be a local path.

    Does not look at the disk: callers check first whether `text` names an existing path
    (`is_hub_ref`)."""
    if not text or text.startswith(("/", ".", "~")) or "\\" in text or ":" in text:
        return None
    match = _REF.match(text)
    if match is None:
        return None
    if match["name"].lower().endswith(MODEL_FILE_SUFFIXES):
        return None
    filename = match["file"]
    if filename is not None:
        parts = PurePosixPath(filename).parts
        if not filename or filename.endswith("/") or any(p in ("", ".", "..") for p in parts):
            return None
    return HubRef(f"{match['org']}/{match['name']}", match["rev"], filename)


def is_hub_ref(text: str, base_dir: Path | None) -> bool:
    """Whether the recipe's `text` names a hub model: shaped like a repo id and not a path
    that exists (relative to the recipe's folder, as every recipe path)."""
    if parse_hub_ref(text) is None:
        return False
    return not files.exists(resolve(text, base_dir))


def hub_cache_dir() -> Path:
    """The hub cache folder, as huggingface_hub chooses it, read at call time (its own constant
    is read once at import): HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """The user set HF_HUB_OFFLINE to a true value: nothing may be downloaded. The runtime sets
    it too, to keep libraries from reaching out on their own (runtime/environment.py), and marks
    that in LORAFILE_SET_HUB_OFFLINE: lorafile's own setting does not stop a download the
    recipe asks for."""
    if os.environ.get("LORAFILE_SET_HUB_OFFLINE"):
        return False
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def cached_snapshot(ref: HubRef, cache: Path | None = None) -> Path | None:
    """The snapshot folder (or file, for a file reference) of `ref` in the local cache, or None.

    The cache layout is huggingface_hub's: `models--org--name/refs/<branch>` holds a commit
    hash, `snapshots/<hash>/` the files. A revision that is not a ref may be a commit hash."""
    repo = (cache or hub_cache_dir()) / ("models--" + ref.repo_id.replace("/", "--"))
    revision = ref.revision or "main"
    ref_file = repo / "refs" / revision
    commit = ref_file.read_text().strip() if ref_file.is_file() else revision
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    if ref.filename is None:
        return snapshot
    target = snapshot / ref.filename
    return target if target.is_file() else None


def describe_location(text: str, base_dir: Path | None) -> str:
    """For people (`lint`, `plan`): where a recipe's model resolves to now. A hub reference
    shows its cached snapshot, or the command that downloads it; nothing is downloaded."""
    if not is_hub_ref(text, base_dir):
        path = resolve(text, base_dir)
        return str(path) if files.exists(path) else f"{path} (missing here)"
    ref = parse_hub_ref(text)
    assert ref is not None  # is_hub_ref checked the shape
    cached = cached_snapshot(ref)
    if cached is not None:
        return f"hub {ref}, cached at {cached}"
    when = (
        "HF_HUB_OFFLINE is set: download it first"
        if hub_offline()
        else "downloads when training starts"
    )
    return f"hub {ref}, not in the cache ({hub_cache_dir()}); {when} (`{ref.download_command()}`)"
