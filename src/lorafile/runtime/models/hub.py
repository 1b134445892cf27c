"""Base models and VAEs named by a Hugging Face Hub id, resolved to local files for training.

`resolve_model` turns the recipe's text into a local path: an existing path as it is, a hub
reference (compiler/hub.py) through huggingface_hub: the local cache first, a download only when
online and HF_HUB_OFFLINE is not set. The token is huggingface_hub's usual one (HF_TOKEN or
`hf auth login`). Only safetensors weights are fetched and loaded: a repository that offers
only pickle weights (`.bin`, `.ckpt`) is refused (F702), as a pickle file on disk is.

What is fetched from a repository is chosen from its file list (`choose_files`): a diffusers
pipeline's config, scheduler and tokenizers plus one set of weights per model part (the
`variant` ones, e.g. `diffusion_pytorch_model.fp16.safetensors`, where the part has them, as
diffusers' own fallback), a VAE repository's config and weights, or a repository's single
`.safetensors` checkpoint. The SDXL base repository also holds the single-file checkpoint,
ONNX, OpenVINO and Flax copies: none of them is downloaded.

Diagnostic codes: F702 pickle-only repository, F703 not a model, F705 not in the cache while
offline, F706 the hub did not answer or refused, F707 several checkpoints in one repository.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from lorafile.compiler.dataset_count import resolve
from lorafile.compiler.diagnostics import DiagnosticError, fail, first_line
from lorafile.compiler.hub import HubRef, hub_cache_dir, hub_offline, is_hub_ref, parse_hub_ref

MODEL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
SIDE_FOLDERS = ("scheduler/", "tokenizer/", "tokenizer_2/")
_WEIGHTS = re.compile(
    r"^(?P<stem>diffusion_pytorch_model|model)(?:\.(?P<variant>[A-Za-z0-9_]+))?"
    r"(?:-\d+-of-\d+)?\.safetensors$"
)
_INDEX = re.compile(
    r"^(?P<stem>diffusion_pytorch_model|model)\.safetensors\.index"
    r"(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json$"
)
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a recipe's model text resolved to."""

    path: Path
    ref: HubRef | None = None
    source: str = "local"
    """`local` (a path), `cache` (found in the hub cache) or `download` (fetched now)."""

    def describe(self) -> str:
        if self.ref is None:
            return str(self.path)
        return f"{self.ref} -> {self.path} (hub, {self.source})"


def variant_of(name: str) -> tuple[bool, str | None]:
    """(is a safetensors weight file or index, its variant) for a file name in a part folder."""
    match = _WEIGHTS.match(name) or _INDEX.match(name)
    return (match is not None, match["variant"] if match else None)


def _weights(names: list[str], variant: str | None, where: str) -> list[str]:
    """The weight files of one model part: the variant's where it has them, else the plain ones."""
    tagged = {n: variant_of(n.rsplit("/", 1)[-1]) for n in names}
    weights = [n for n, (ok, _) in tagged.items() if ok]
    chosen = [n for n in weights if variant and tagged[n][1] == variant]
    chosen = chosen or [n for n in weights if tagged[n][1] is None]
    if chosen:
        return chosen
    if any(n.endswith(_PICKLE_SUFFIXES) for n in names):
        raise fail(
            "F702",
            f"{where} has only pickle weights (.bin), no safetensors; loading them would run "
            "any code they contain.",
            "use a repository that offers .safetensors weights, or download and convert them "
            "yourself if you trust the source",
        )
    raise fail("F703", f"{where} holds no model weights.", "check the repository id")


def choose_files(files: list[str], variant: str | None, name: str) -> list[str]:
    """The files of a hub repository (relative posix paths) that loading the model needs."""
    files = sorted(files)
    if "model_index.json" in files:
        picked = ["model_index.json"] + [f for f in files if f.startswith(SIDE_FOLDERS)]
        for part in MODEL_PARTS:
            names = [f for f in files if f.startswith(part + "/") and f.count("/") == 1]
            if f"{part}/config.json" not in names:
                raise fail(
                    "F703",
                    f"`{name}` is a diffusers repository without `{part}/config.json`.",
                    "an SDXL pipeline repository has unet/, vae/, text_encoder/ and "
                    "text_encoder_2/",
                )
            picked += [f"{part}/config.json", *_weights(names, variant, f"`{name}/{part}`")]
        return picked
    root = [f for f in files if "/" not in f]
    if "config.json" in root and any(_WEIGHTS.match(f) or f.endswith(".bin") for f in root):
        return ["config.json", *_weights(root, variant, f"`{name}`")]  # a VAE repository
    return [_single_checkpoint(root, name)]


def _single_checkpoint(root: list[str], name: str) -> str:
    singles = [f for f in root if f.endswith(".safetensors")]
    if len(singles) == 1:
        return singles[0]
    if len(singles) > 1:
        raise fail(
            "F707",
            f"`{name}` holds {len(singles)} checkpoints: {', '.join(singles)}.",
            f'name the one to train on: base sdxl "{name}/{singles[0]}"',
        )
    if any(f.endswith(_PICKLE_SUFFIXES) for f in root):
        raise fail(
            "F702",
            f"`{name}` offers only pickle checkpoints; loading one would run any code it contains.",
            "use a repository with a .safetensors checkpoint or a diffusers folder",
        )
    raise fail(
        "F703",
        f"`{name}` is neither a diffusers SDXL repository (model_index.json) nor holds a "
        ".safetensors checkpoint.",
        "check the repository id",
    )


def resolve_model(text: str, base_dir: Path | None, variant: str | None = None) -> ResolvedModel:
    """The local files of the recipe's model `text` (see the module docstring).

    Raises DiagnosticError: F705 when offline and not cached (naming the download command),
    F706 when the hub refuses or cannot be reached, F702/F703/F707 for the repository's files."""
    if not is_hub_ref(text, base_dir):
        return ResolvedModel(resolve(text, base_dir))
    ref = parse_hub_ref(text)
    assert ref is not None  # is_hub_ref checked the shape
    if ref.filename is not None and not ref.filename.endswith(".safetensors"):
        raise fail(
            "F702",
            f"`{ref.filename}` in `{ref.repo_id}` is not a .safetensors file; only safetensors "
            "are loaded from the hub (a pickle file runs any code it contains).",
            "name the repository's .safetensors file, or its diffusers folder by the repo id",
        )
    cached = _from_cache(ref, variant)
    if cached is not None:
        return ResolvedModel(cached, ref, "cache")
    if hub_offline():
        raise fail(
            "F705",
            f"The model `{ref}` is not in the local hub cache ({hub_cache_dir()}), and "
            "HF_HUB_OFFLINE is set, so it cannot be downloaded (nor is there a local "
            f"`{resolve(text, base_dir)}`).",
            f"download it where there is a network: `{ref.download_command()}` (same HF_HOME), "
            "or unset HF_HUB_OFFLINE",
        )
    return ResolvedModel(_download(ref, variant), ref, "download")


def local_model(text: str, base_dir: Path | None, variant: str | None, announce: bool) -> Path:
    """The local path of a recipe's model text (`resolve_model`); `announce` prints where a hub
    id resolved to, so a run's log says which snapshot it trained on."""
    resolved = resolve_model(text, base_dir, variant)
    if resolved.ref is not None and announce:
        print(f"model {resolved.describe()}", flush=True)
    return resolved.path


def _from_cache(ref: HubRef, variant: str | None) -> Path | None:
    """The cached snapshot (or file) holding everything needed, or None."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = str(hub_cache_dir())
    try:
        if ref.filename is not None:
            return Path(
                hf_hub_download(
                    ref.repo_id,
                    ref.filename,
                    revision=ref.revision,
                    cache_dir=cache,
                    local_files_only=True,
                )
            )
        folder = Path(
            snapshot_download(
                ref.repo_id, revision=ref.revision, cache_dir=cache, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None
    present = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    try:
        wanted = choose_files(present, variant, str(ref))
    except DiagnosticError:
        if hub_offline():
            raise
        return None  # a partial snapshot: let the hub's full file list decide
    return folder / wanted[0] if _is_single(wanted) else folder


def _is_single(files: list[str]) -> bool:
    return len(files) == 1 and files[0].endswith(".safetensors") and "/" not in files[0]


@contextlib.contextmanager
def _online():
    """huggingface_hub online for the download: the offline mode lorafile itself set (see
    runtime/environment.py) is lifted for it; a user's HF_HUB_OFFLINE never gets here."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _download(ref: HubRef, variant: str | None) -> Path:
    """Fetch what `ref` needs from the hub (the token is huggingface_hub's default)."""
    with _online():
        return _fetch(ref, variant)


def _fetch(ref: HubRef, variant: str | None) -> Path:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    cache = str(hub_cache_dir())
    try:
        if ref.filename is not None:
            return Path(
                hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=cache)
            )
        files = HfApi().list_repo_files(ref.repo_id, revision=ref.revision)
        wanted = choose_files(files, variant, str(ref))
        folder = Path(
            snapshot_download(
                ref.repo_id, revision=ref.revision, cache_dir=cache, allow_patterns=wanted
            )
        )
    except GatedRepoError as err:
        raise _hub_refused(ref, "is gated: its licence must be accepted first", err) from None
    except RepositoryNotFoundError as err:
        raise _hub_refused(ref, "was not found (or is private)", err) from None
    except (HfHubHTTPError, OSError) as err:
        raise _hub_refused(ref, "could not be downloaded", err) from None
    return folder / wanted[0] if _is_single(wanted) else folder


def _hub_refused(ref: HubRef, what: str, err: Exception) -> DiagnosticError:
    return fail(
        "F706",
        f"The hub model `{ref}` {what}: {first_line(err)}",
        "check the id and revision on huggingface.co; for gated or private models accept the "
        "licence there and log in (`hf auth login` or HF_TOKEN)",
    )
