"""Load SimpleTuner's config files as plain data, with a diagnostic for every legacy form.

SimpleTuner reads `config.json`, `config.toml` or `config.env` (helpers/configuration/loader.py),
never YAML. `load_config(path, bag)` finds the file (a folder or a file), parses it, strips the
optional leading `--`, translates legacy spellings the way `cli_utils.mapping_to_cli_args` does,
and returns `{argument: value}` with values typed as argparse would see them.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.backends import yamlio
from lorafile.backends.simpletuner import mapping as m
from lorafile.backends.simpletuner import options as opts
from lorafile.backends.textio import read_input_text
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, Suggester
from lorafile.files import exists, is_dir, is_file

CONFIG_NAMES = ("config.json", "config.toml", "config.env")
TOO_DEEP = "no SimpleTuner setting nests more than a few levels: flatten the value"


PLACEHOLDER = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_ARCHITECTURES = {"sdxl", "sd1x", "sd2x", "sd3", "flux", "pixart_sigma", "kolors", "legacy"}


@dataclass
class Loaded:
    """A SimpleTuner config as arguments, plus where it came from."""

    config: dict = field(default_factory=dict)
    path: Path | None = None
    folder: Path = Path(".")
    processes: int | None = None
    """TRAINING_NUM_PROCESSES from config.env or a lorafile train.sh beside the config."""


def find_config(path: Path, bag: DiagnosticBag) -> Path:
    """The config file a folder holds (SimpleTuner's order: json, toml, env), or `path`."""
    if is_file(path):
        return path
    if not exists(path) and is_dir(path.parent):
        path = path.parent  # a config file name that is not here: look in its folder
    for folder in (path, path / "config"):
        for name in CONFIG_NAMES:
            if is_file(folder / name):
                return folder / name
        for name in ("config.yaml", "config.yml"):
            if is_file(folder / name):
                return folder / name
    bag.error(
        "I651",
        f"No SimpleTuner config found in `{path}`.",
        "point at config.json, config.toml or config.env, or the folder holding one",
    )
    raise DiagnosticError(bag.items)


def load_config(path: Path, bag: DiagnosticBag) -> Loaded:
    """Parse and normalise the config at `path` (a file or a config folder)."""
    file = find_config(Path(path), bag)
    loaded = Loaded(path=file, folder=file.parent)
    suffix = file.suffix.lower()
    if suffix in (".yaml", ".yml"):
        raw = _yaml(file, bag)
    elif suffix == ".toml":
        raw = _parsed(file, bag, lambda t: tomllib.loads(t))
    elif suffix == ".env" or file.name.endswith(".env"):
        raw, loaded.processes = _env(file, bag)
    else:
        raw = _parsed(file, bag, json.loads)
    if loaded.processes is None:
        loaded.processes = _train_sh_processes(file.parent)
    loaded.config = normalise_keys(raw, bag)
    return loaded


def read_text(file: Path, bag: DiagnosticBag) -> str:
    """A config file's text; R110 when it is not UTF-8, I651 when it cannot be read."""
    return read_input_text(
        file, bag, "I651", "check the path", utf8_help="save the config as UTF-8"
    )


def _parsed(file: Path, bag: DiagnosticBag, parse) -> dict:
    text = read_text(file, bag)
    try:
        data = parse(text)
    except RecursionError:
        # json, tomllib and yaml parse nesting recursively (issue 12).
        bag.error("I651", f"`{file}` nests lists or objects too deeply to read.", TOO_DEEP)
        raise DiagnosticError(bag.items) from None
    except (ValueError, tomllib.TOMLDecodeError) as err:  # yamlio.YAMLError is a ValueError
        bag.error(
            "I651",
            f"`{file}` is not valid {file.suffix[1:].upper()}: {err}.",
            "fix the syntax error",
        )
        raise DiagnosticError(bag.items) from err
    if not isinstance(data, dict):
        bag.error("I651", f"`{file}` must hold one object of settings.", "")
        raise DiagnosticError(bag.items)
    return data


def _yaml(file: Path, bag: DiagnosticBag) -> dict:
    bag.warning(
        "I630",
        f"`{file.name}` is YAML, which SimpleTuner never reads (there is no "
        "--config_file); it is read as if it were config.json.",
        "compile the imported recipe with `--target simpletuner` to get config.json",
    )
    return _parsed(file, bag, yamlio.load)


def _env(file: Path, bag: DiagnosticBag) -> tuple[dict, int | None]:
    """config.env: mapped variables plus TRAINER_EXTRA_ARGS (helpers/configuration/env_file.py)."""
    values: dict[str, str] = {}
    for line in read_text(file, bag).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key.endswith("+"):
            key = key[:-1].strip()
            value = f"{values.get(key, '')} {value}".strip()
        values[key] = value
    raw: dict = {}
    processes = None
    for key, value in values.items():
        if key == "TRAINER_EXTRA_ARGS":
            raw.update(_extra_args(value, bag))
        elif key == "TRAINING_NUM_PROCESSES" and value.isdigit():
            processes = int(value)
        elif key in opts.ENV_TO_ARG:
            arg = opts.ENV_TO_ARG[key]
            raw[arg] = opts.coerce(arg, value)
        elif key not in opts.ENV_LAUNCHER:
            bag.warning(
                "I636",
                f"config.env sets `{key}`, which SimpleTuner does not map to "
                "an argument; it is ignored.",
                "move it into TRAINER_EXTRA_ARGS as `--name=value`",
            )
    return raw, processes


def _extra_args(text: str, bag: DiagnosticBag) -> dict:
    """`--key=value`, `--key value` and bare `--flag` words of TRAINER_EXTRA_ARGS."""
    words = shlex.split(text)
    out: dict = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-"):
            bag.warning(
                "I636",
                f"TRAINER_EXTRA_ARGS has `{word}` without an option name; it is ignored.",
                "write every argument as --name=value",
            )
            continue
        key, eq, value = word.lstrip("-").partition("=")
        if not eq and i < len(words) and not words[i].startswith("-"):
            value, eq = words[i], "="
            i += 1
        out[key] = opts.coerce(key, value) if eq else True
    return out


def _train_sh_processes(folder: Path) -> int | None:
    script = folder / "train.sh"
    if not is_file(script):
        return None
    try:
        text = script.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None  # only a hint for the GPU count
    found = re.search(r"TRAINING_NUM_PROCESSES=(\d+)", text)
    return int(found.group(1)) if found else None


def normalise_keys(raw: dict, bag: DiagnosticBag) -> dict:
    """Strip dashes, translate legacy names, drop what SimpleTuner would ignore or reject."""
    config: dict = {}
    suggest = Suggester(opts.table())  # capped: a config may hold thousands of unknown keys
    for key, value in raw.items():
        name = str(key).strip().lstrip("-")
        value = _typed(name, value, bag)
        if value is None:
            continue
        if name in opts.LEGACY_RENAMES:
            new = opts.LEGACY_RENAMES[name]
            bag.info(
                "I633",
                f"`{name}` is the legacy spelling of `{new}` (renamed in "
                f"SimpleTuner PR #1706); it is read as `{new}`.",
                f"write `{new}`",
            )
            name = new
        if _legacy(name, value, config, bag):
            continue
        if name in opts.DATASET_ONLY_KEYS:
            bag.warning(
                "I641",
                f"`{name}` is a dataset setting; at the top level SimpleTuner ignores it.",
                "set it on the dataset in multidatabackend.json",
            )
            continue
        if not opts.known(name):
            bag.warning(
                "I636",
                f"`{name}` is not a SimpleTuner argument; SimpleTuner's "
                f"argument parser would reject it.{suggest.hint(name)}",
                "remove it or correct its name",
            )
            continue
        config[name] = value
    return config


def _typed(name: str, value: object, bag: DiagnosticBag) -> object:
    if isinstance(value, str):
        for var in PLACEHOLDER.findall(value):
            bag.info(
                "I635",
                f"`{name}` uses the placeholder {{env:{var}}}, which SimpleTuner "
                f"fills from the environment at launch; it is kept as written.",
                f"set {var} when training, or write the value",
            )
        spec = opts.table().get(name, {})
        if spec.get("type") == "bool" and value.strip().lower() == "false":
            bag.warning(
                "I642",
                f'`{name}` is the string "false", which SimpleTuner drops '
                "silently, so its default applies.",
                f"write `{name}: false` without quotes",
            )
            return None
        if spec.get("type") in ("bool", "int", "float"):
            return opts.coerce(name, value)
    return value


def _legacy(name: str, value: object, config: dict, bag: DiagnosticBag) -> bool:
    """Options SimpleTuner removed or people invent; True when handled here."""
    if name == "use_8bit_adam":
        bag.warning(
            "I632",
            "`use_8bit_adam` was removed from SimpleTuner in August 2024; it is "
            "read as `optimizer: bnb-adamw8bit`.",
            "write `optimizer: bnb-adamw8bit`",
        )
        if value:
            config.setdefault("optimizer", "bnb-adamw8bit")
        return True
    if name == "enable_xformers_memory_efficient_attention":
        bag.info(
            "I633",
            "`enable_xformers_memory_efficient_attention` is legacy; it is read as "
            "`attention_mechanism: xformers`.",
            "write `attention_mechanism: xformers`",
        )
        if value:
            config["attention_mechanism"] = "xformers"
        return True
    if name == "vae_cache_preprocess":
        bag.info(
            "I633",
            "`vae_cache_preprocess` is legacy; SimpleTuner caches latents anyway.",
            "remove it",
        )
        return True
    return _legacy_values(name, value, config, bag)


def _legacy_values(name: str, value: object, config: dict, bag: DiagnosticBag) -> bool:
    """Values SimpleTuner no longer accepts for an option that still exists."""
    if name == "model_type" and str(value) in _ARCHITECTURES:
        bag.warning(
            "I631",
            f"`model_type: {value}` names an architecture; SimpleTuner's "
            "model_type is `lora` or `full`, and the architecture goes in "
            "`model_family`.",
            f"write `model_family: {value}` and `model_type: lora`",
        )
        config.setdefault("model_family", str(value))
        config["model_type"] = "lora"
        return True
    if name == "optimizer" and str(value) in m.REMOVED_OPTIMIZERS:
        new = m.REMOVED_OPTIMIZERS[str(value)]
        bag.warning(
            "I632",
            f"`optimizer: {value}` was removed from SimpleTuner; it is read as `{new}`.",
            f"write `optimizer: {new}`",
        )
        config["optimizer"] = new
        return True
    return False


def load_json_file(path: Path, bag: DiagnosticBag, what: str) -> object | None:
    """A referenced JSON file (multidatabackend.json, lycoris_config.json), or None."""
    if not is_file(path):
        return None
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as err:
        bag.error("I634", f"{what} `{path}` cannot be read: {err.strerror or err}.", "")
    except RecursionError:
        bag.error("I634", f"{what} `{path}` nests lists or objects too deeply to read.", TOO_DEEP)
    except ValueError as err:  # UnicodeDecodeError included
        bag.error("I634", f"{what} `{path}` is not valid JSON: {err}.", "fix the syntax error")
    return None


def resolve(reference: str, folder: Path) -> Path:
    """A referenced file: absolute as given, else from the config folder (or the project folder
    above it, as `config/...` paths are written), else from the current folder."""
    candidate = Path(reference)
    if candidate.is_absolute():
        return candidate
    for path in (folder / candidate, folder.parent / candidate, folder / candidate.name):
        if exists(path):
            return path
    return candidate if exists(candidate) else folder / candidate


def image_entries(entries: list[dict], bag: DiagnosticBag | None = None) -> list[dict]:
    """The entries that hold training images, in file order."""
    out = []
    for entry in entries:
        kind = entry.get("dataset_type", "image")
        if kind in ("text_embeds", "image_embeds"):
            continue
        if entry.get("disabled") or entry.get("disable"):
            if bag:
                bag.info(
                    "I644",
                    f"dataset `{entry.get('id')}` is disabled; it is left out.",
                    "enable it to import it",
                )
            continue
        if kind != "image":
            if bag:
                bag.warning(
                    "I644",
                    f"dataset `{entry.get('id')}` is a {kind} dataset, which an "
                    "SDXL LoRA recipe cannot hold; it is left out.",
                    "remove it",
                )
            continue
        out.append(entry)
    return out


def is_regularisation(entry: dict) -> bool:
    return bool(entry.get("is_regularisation_data") or entry.get("is_regularization_data"))
