"""What sd-scripts does with a config before training: flattening, defaults, dataset blueprint.

A model of `library/train_util.py::read_config_from_file` (one-level flattening, later sections
win, argparse defaults under the TOML values) and of `library/config_util.py` (the strict dataset
schema and the subset > dataset > general > argparse fallback chain). The reader maps the
*effective* values this module computes into a Recipe, and the round-trip tests compare effective
values, so a config and its lorafile rewrite mean the same run even when spelled differently.
See docs/backends/kohya.md and ../shared/reference/kohya.md §1 and §3.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.backends.kohya.options import OPTIONS
from lorafile.files import is_dir

# config_util schema (kohya.md §3.2): key -> (accepted python types, levels it may appear at).
# Levels: g = [general], d = [[datasets]], s = [[datasets.subsets]].
_INT = (int,)
_FLOAT = (float,)
_NUM = (int, float)
_STR = (str,)
_BOOL = (bool,)
DATASET_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "resolution": ((int, list), "gd"),
    "batch_size": (_INT, "gd"),
    "enable_bucket": (_BOOL, "gd"),
    "min_bucket_reso": (_INT, "gd"),
    "max_bucket_reso": (_INT, "gd"),
    "bucket_reso_steps": (_INT, "gd"),
    "bucket_no_upscale": (_BOOL, "gd"),
    "network_multiplier": (_FLOAT, "gd"),
    "validation_seed": (_INT, "gd"),
    "validation_split": (_FLOAT, "gd"),
    "resize_interpolation": (_STR, "gds"),
    "num_repeats": (_INT, "gds"),
    "shuffle_caption": (_BOOL, "gds"),
    "flip_aug": (_BOOL, "gds"),
    "color_aug": (_BOOL, "gds"),
    "random_crop": (_BOOL, "gds"),
    "enable_wildcard": (_BOOL, "gds"),
    "keep_tokens": (_INT, "gds"),
    "keep_tokens_separator": (_STR, "gds"),
    "caption_separator": (_STR, "gds"),
    "secondary_separator": (_STR, "gds"),
    "caption_prefix": (_STR, "gds"),
    "caption_suffix": (_STR, "gds"),
    "face_crop_aug_range": ((list,), "gds"),
    "token_warmup_min": (_INT, "gds"),
    "token_warmup_step": (_NUM, "gds"),
    "custom_attributes": ((dict,), "gds"),
    "caption_dropout_rate": (_NUM, "gds"),
    "caption_tag_dropout_rate": (_NUM, "gds"),
    "caption_dropout_every_n_epochs": (_INT, "gds"),
    "caption_extension": (_STR, "gds"),
    "class_tokens": (_STR, "gds"),
    "cache_info": (_BOOL, "gds"),
    "image_dir": (_STR, "s"),
    "is_reg": (_BOOL, "s"),
    "alpha_mask": (_BOOL, "s"),
    "metadata_file": (_STR, "s"),
    "conditioning_data_dir": (_STR, "s"),
}
DATASET_LEVEL = tuple(k for k, (_, lv) in DATASET_KEYS.items() if lv == "gd")
SUBSET_LEVEL = tuple(k for k, (_, lv) in DATASET_KEYS.items() if "s" in lv)
# argparse dests that feed a dataset key of another name (config_util's fallback mapping).
ARGPARSE_ALIASES = {"batch_size": "train_batch_size", "num_repeats": "dataset_repeats"}
# Dataclass defaults below the argparse level, for keys argparse does not define.
DATACLASS_DEFAULTS: dict[str, object] = {
    "network_multiplier": 1.0,
    "is_reg": False,
    "class_tokens": None,
    "custom_attributes": None,
    "image_dir": None,
    "metadata_file": None,
    "conditioning_data_dir": None,
}
# transformers' Adafactor defaults: what sd-scripts' Adafactor gets for a key that
# `optimizer_args` leaves out.
ADAFACTOR_DEFAULTS = {"scale_parameter": True, "relative_step": True, "warmup_init": False}

FOLDER = re.compile(r"^(\d+)_(.*)$")


def defaults() -> dict[str, object]:
    """The argparse namespace of `sdxl_train_network.py` with no arguments."""
    return {dest: opt.default for dest, opt in OPTIONS.items()}


def flatten(doc: dict) -> tuple[dict, list[tuple[tuple[str, ...], str]], dict[str, list[str]]]:
    """Flatten like `read_config_from_file`: one level, later sections win.

    Returns the flat dict, the nested tables sd-scripts loses (path, key), and for each key the
    sections it appeared in (to report keys set twice).
    """
    flat: dict[str, object] = {}
    lost: list[tuple[tuple[str, ...], str]] = []
    seen: dict[str, list[str]] = {}
    for name, value in doc.items():
        if not isinstance(value, dict):
            flat[name] = value
            seen.setdefault(name, []).append("")
            continue
        for key, item in value.items():
            if isinstance(item, dict):
                lost.extend(((name, key), sub) for sub in item)
            flat[key] = item
            seen.setdefault(key, []).append(name)
    return flat, lost, seen


@dataclass
class Subset:
    """One subset as sd-scripts builds it: every dataset-config key with its effective value."""

    params: dict[str, object]
    dataset_index: int
    block: dict[str, object] = field(default_factory=dict)
    """The effective dataset-level values of the `[[datasets]]` block it belongs to."""

    @property
    def is_reg(self) -> bool:
        return bool(self.params.get("is_reg"))


def argparse_fallback(args: dict[str, object], key: str) -> object:
    dest = ARGPARSE_ALIASES.get(key, key)
    if dest == "caption_extension" and args.get("caption_extention") is not None:
        return args["caption_extention"]  # the deprecated misspelling still wins in sd-scripts
    if dest in args:
        return args[dest]
    return DATACLASS_DEFAULTS.get(key)


def blueprint(args: dict[str, object], user_config: dict) -> list[Subset]:
    """Effective subset parameters (`BlueprintGenerator.generate_params_by_fallbacks`)."""
    general = user_config.get("general", {}) or {}
    subsets: list[Subset] = []
    for index, dataset in enumerate(user_config.get("datasets", []) or []):
        block = {k: _first(k, dataset, general, args=args) for k in DATASET_LEVEL}
        for subset in dataset.get("subsets", []) or []:
            params = {k: _first(k, subset, dataset, general, args=args) for k in SUBSET_LEVEL}
            subsets.append(Subset(params=params, dataset_index=index, block=block))
    return subsets


def _first(key: str, *levels: dict, args: dict) -> object:
    for level in levels:
        if level.get(key) is not None:
            return level[key]
    return argparse_fallback(args, key)


def folder_config(args: dict[str, object], base: Path | None) -> tuple[dict, list[str]]:
    """The user config sd-scripts builds from `train_data_dir`/`reg_data_dir` subfolders.

    Returns the config and the folders that were skipped or missing, for diagnostics.
    """
    problems: list[str] = []
    subsets: list[dict] = []
    for key, is_reg in (("train_data_dir", False), ("reg_data_dir", True)):
        root = args.get(key)
        if not root:
            continue
        found = _subdirs(str(root), base)
        if found is None:
            problems.append(f"missing:{key}:{root}")
            subsets.append({"image_dir": str(root), "is_reg": is_reg, "_assumed": True})
            continue
        for name in found:
            match = FOLDER.match(name)
            if not match or int(match.group(1)) < 1:
                problems.append(f"skipped:{key}:{name}")
                continue
            path = f"{str(root).rstrip('/')}/{name}"
            subsets.append(
                {
                    "image_dir": path,
                    "num_repeats": int(match.group(1)),
                    "class_tokens": match.group(2),
                    "is_reg": is_reg,
                }
            )
    return {"datasets": [{"subsets": subsets}]}, problems


def _subdirs(root: str, base: Path | None) -> list[str] | None:
    candidates = [Path(root)]
    if base is not None and not os.path.isabs(root):
        candidates.insert(0, base / root)
    for candidate in candidates:
        if is_dir(candidate):
            try:
                return sorted(p.name for p in candidate.iterdir() if is_dir(p))
            except OSError:
                return None
    return None


def optimizer_args(args: dict[str, object]) -> dict[str, str]:
    """`optimizer_args` as key -> value text: each item split at its first `=`, stripped."""
    values = {}
    for item in args.get("optimizer_args") or []:
        key, _, text = str(item).partition("=")
        values[key.strip()] = text.strip()
    return values


def literal(text: str) -> object:
    """An optimizer/network arg value as sd-scripts reads it (`ast.literal_eval`, else text)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
