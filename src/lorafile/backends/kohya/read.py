"""kohya sd-scripts config -> Recipe, with a diagnostic for everything sd-scripts gets wrong.

Reading follows what `sdxl_train_network.py` does with the files (schema.py): flatten
the `--config_file` TOML one level, lay the values over the argparse defaults, build the dataset
blueprint from `--dataset_config` or the `<repeats>_<class>` folders, then map the *effective*
values to recipe fields. Whatever the recipe cannot say is kept in `passthrough["kohya"]`: the
reader writes the recipe back (write.py) and keeps every value that would come out
different, so kohya -> recipe -> kohya loses nothing. Codes I601-I629: docs/diagnostics.md.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.backends import yamlio
from lorafile.backends.kohya import schema as schema
from lorafile.backends.kohya import write as kw
from lorafile.backends.kohya.options import OPTIONS
from lorafile.backends.textio import read_input_text
from lorafile.backends.tomlio import key_lines
from lorafile.compiler.diagnostics import (
    DiagnosticBag,
    DiagnosticError,
    Span,
    Suggester,
    closest,
    hint,
)

# Keys people write that sd-scripts does not have (kohya.md §10), with what to write instead.
TRAPS = {
    "batch_size": (
        "train_batch_size",
        "sd-scripts ignores it silently and trains with batch size 1",
    ),
    "epoch": ("max_train_epochs", "sd-scripts ignores it; the step count decides the length"),
    "epochs": ("max_train_epochs", "sd-scripts ignores it; the step count decides the length"),
    "text_encoder_lr1": ("text_encoder_lr", "sd-scripts ignores it"),
    "text_encoder_lr2": ("text_encoder_lr", "sd-scripts ignores it"),
    "lr_warmup_ratio": ("lr_warmup_steps", "write the ratio as a float, e.g. 0.05"),
    "lr_power": ("lr_scheduler_power", "sd-scripts ignores it"),
    "weight_decay": ("optimizer_args", 'write optimizer_args = ["weight_decay=0.01"]'),
    "bucket_resolution_steps": ("bucket_reso_steps", "sd-scripts ignores it"),
    "use_pytorch_cross_attention": ("sdpa", "sd-scripts ignores it"),
}
KOHYA_SAMPLERS = {
    "ddim": "ddim",
    "pndm": "pndm",
    "lms": "lms",
    "euler": "euler",
    "euler_a": "euler_a",
    "heun": "heun",
    "dpm_2": "dpm_2",
    "dpm_2_a": "dpm_2_a",
    "dpmsolver++": "dpmpp_2m",
    "k_lms": "lms",
    "k_euler": "euler",
    "k_euler_a": "euler_a",
    "k_dpm_2": "dpm_2",
    "k_dpm_2_a": "dpm_2_a",
}
APPROX_SAMPLERS = {"dpmsolver": "dpmpp_2m", "dpmsingle": "dpmpp_2m"}
OPTIMIZERS = {v.lower(): k for k, v in kw.OPTIMIZER_TYPES.items()} | {"": "adamw"}
APPROX_OPTIMIZERS = {
    "pagedadamw8bit": "adamw8bit",
    "pagedadamw": "adamw",
    "pagedadamw32bit": "adamw",
    "pagedlion8bit": "lion8bit",
    "sgdnesterov": "sgd",
    "sgdnesterov8bit": "sgd",
    "adamwschedulefree": "adamw",
    "radamschedulefree": "adamw",
    "sgdschedulefree": "sgd",
}
SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
APPROX_SCHEDULERS = {
    "cosine_with_min_lr": "cosine",
    "cosine_warmup_with_min_lr": "cosine",
    "warmup_stable_decay": "constant_with_warmup",
}
# Flat keys the dataset blueprint consumes, or that only point at other files.
DATASET_SOURCES = ("train_data_dir", "reg_data_dir", "dataset_config", "in_json")
NOT_SETTINGS = (
    "config_file",
    "output_config",
    "train_batch_size",
    "dataset_repeats",
    "caption_extention",
)
# Choice options the recipe maps: a bad value is replaced by the default (and reported).
MAPPED_CHOICES = {"mixed_precision", "save_precision", "log_with", "sample_sampler"}
PROMPT_OPTION = re.compile(r"^(ss|n|w|h|d|l|s|g|cn|ctr|rcfg|fs)\s+(.*)$", re.IGNORECASE | re.S)


@dataclass
class Source:
    """One file being read: its path, text and the line of each key."""

    path: Path
    text: str
    lines: dict = field(default_factory=dict)

    def bag(self) -> DiagnosticBag:
        return DiagnosticBag(file=str(self.path), source=self.text)


@dataclass
class Context:
    """Everything the mapping functions need while reading one config."""

    bag: DiagnosticBag
    config: Source
    args: dict
    flat: dict
    section_of: dict
    meta: dict
    corrected: set = field(default_factory=set)
    consumed: set = field(default_factory=set)
    suggest: Suggester = field(default_factory=lambda: Suggester(OPTIONS))
    """"Did you mean" for unknown keys, capped: a config may hold thousands of them."""

    def span(self, key: str) -> Span | None:
        for section in self.section_of.get(key, [""])[::-1]:
            path = (section, key) if section else (key,)
            if path in self.config.lines:
                return Span(self.config.lines[path], 1)
        return None

    def error(self, code: str, key: str | None, message: str, help: str = "") -> None:
        self.bag.error(code, message, help, span=self.span(key) if key else None)

    def warning(self, code: str, key: str | None, message: str, help: str = "") -> None:
        self.bag.warning(code, message, help, span=self.span(key) if key else None)

    def info(self, code: str, key: str | None, message: str, help: str = "") -> None:
        self.bag.info(code, message, help, span=self.span(key) if key else None)


def load_source(path: Path, bag: DiagnosticBag) -> tuple[Source, dict]:
    """Read and parse one TOML file; a file that cannot be read or parsed stops the import."""
    text = _read_text(path, bag)
    source = Source(path=path, text=text, lines=key_lines(text))
    try:
        return source, tomllib.loads(text)
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively (issue 12).
        bag.error(
            "I600",
            f"`{path.name}` nests arrays or tables too deeply to read.",
            "no sd-scripts setting nests more than two levels: flatten the value",
        )
        raise DiagnosticError(bag.items) from None
    except (tomllib.TOMLDecodeError, ValueError) as err:  # ValueError: an int of 4300+ digits
        sub = source.bag()
        found = re.search(r"line (\d+), column (\d+)", str(err))
        span = Span(int(found.group(1)), int(found.group(2))) if found else None
        sub.error("I600", f"`{path.name}` is not valid TOML: {err}.", "fix the syntax", span=span)
        bag.extend(sub.items)
        raise DiagnosticError(bag.items) from err


def _read_text(path: Path, bag: DiagnosticBag) -> str:
    """The file's text; R110 when it is not UTF-8 (as for `migrate`), I600 when unreadable.

    Decoded as plain UTF-8: sd-scripts' `toml` keeps a BOM in the first key, so a BOM is not
    silently dropped here (tomllib reports it as I600).
    """
    return read_input_text(
        path,
        bag,
        "I600",
        "check the path and try again",
        utf8_help="save the config as UTF-8 (sd-scripts reads it as UTF-8 too)",
        encoding="utf-8",
    )


def read_meta(text: str) -> dict:
    """The `# lorafile.key = json` comment lines the writer leaves in config.toml."""
    meta = {}
    for match in re.finditer(rf"^#\s*{re.escape(kw.META_PREFIX)}(\S+) = (.+)$", text, re.M):
        try:
            meta[match.group(1)] = json.loads(match.group(2))
        except json.JSONDecodeError:
            continue
    return meta


def flatten_config(source: Source, doc: dict, bag: DiagnosticBag) -> tuple[dict, dict]:
    """Flatten like sd-scripts and report nested tables (I602) and repeated keys (I603)."""
    flat, lost, seen = schema.flatten(doc)
    for (section, table), key in lost:
        line = source.lines.get((section, table, key)) or source.lines.get((section, table))
        bag.warning(
            "I602",
            f"`{key}` in the nested table `[{section}.{table}]` is lost: sd-scripts flattens "
            "only one level of sections.",
            f"move `{key}` into `[{section}]` or another top-level section",
            span=Span(line, 1) if line else None,
        )
        flat.pop(table, None)
    for key, sections in seen.items():
        if len(sections) > 1:
            where = ", ".join(f"[{s}]" if s else "the top level" for s in sections)
            line = source.lines.get((sections[-1], key) if sections[-1] else (key,))
            bag.warning(
                "I603",
                f"`{key}` is set in {where}; sd-scripts uses the last one, {flat[key]!r}.",
                "keep one of them",
                span=Span(line, 1) if line else None,
            )
    return flat, seen


def check_keys(ctx: Context) -> None:
    """Unknown keys (I601) and values argparse would never have produced (I604, I607)."""
    for key in list(ctx.flat):
        if key in OPTIONS:
            ctx.args[key] = check_value(ctx, key, ctx.flat[key])
        else:
            _unknown_key(ctx, key)


def _unknown_key(ctx: Context, key: str) -> None:
    if key in TRAPS:
        right, effect = TRAPS[key]
        message = f"`{key}` is not an sd-scripts argument: {effect}. Did you mean `{right}`?"
        ctx.warning("I601", key, message, f"rename it to `{right}`")
        return
    if key in schema.DATASET_KEYS:
        message = (
            f"`{key}` is not an sd-scripts argument, but sd-scripts uses it as a default for "
            "every dataset that does not set it."
        )
        ctx.warning("I601", key, message, "move it into the dataset config")
        return
    guess = ctx.suggest(key)
    ctx.warning(
        "I601",
        key,
        f"`{key}` is not an sd-scripts argument; sd-scripts ignores it silently.{hint(guess)}",
        f"rename it to `{guess}`" if guess else "remove it",
    )


def check_value(ctx: Context, key: str, value: object) -> object:
    """The value sd-scripts would run with, after reporting a wrong TOML type."""
    option = OPTIONS[key]
    if option.is_list:
        return _check_list(ctx, key, value, option.type)
    coerced, problem = _coerce(option.type, value)
    if problem:
        ctx.corrected.add(key)
        ctx.error("I604", key, f"`{key} = {_toml(value)}` {problem}.", _type_help(key, option.type))
    if key == "max_token_length" and coerced == 75:
        return None  # kohya_ss writes 75: the plain CLIP length, which is what None means
    if option.choices and coerced not in option.choices:
        return _bad_choice(ctx, key, coerced, option)
    return coerced


def _bad_choice(ctx: Context, key: str, value: object, option) -> object:
    choices = [c for c in option.choices if c is not None]
    guess = closest(str(value), map(str, choices))
    message = (
        f"`{key} = {_toml(value)}` is not one of {', '.join(map(str, choices))}; "
        "sd-scripts does not check values from a TOML file."
    )
    message += hint(guess)
    if key in MAPPED_CHOICES:
        ctx.corrected.add(key)
        ctx.error("I607", key, message + " The recipe uses the default.", "use a listed value")
        return option.default
    ctx.warning("I607", key, message + " It is kept as written.", "use a listed value")
    return value


def _check_list(ctx: Context, key: str, value: object, kind: str) -> object:
    if isinstance(value, list):
        return value
    if key == "text_encoder_lr" and isinstance(value, int | float):
        return [value]  # train_network's "toml backward compatibility" branch (PR #1620)
    ctx.corrected.add(key)
    ctx.error(
        "I604",
        key,
        f"`{key}` must be a TOML array; sd-scripts iterates the string {value!r} character by "
        "character and fails.",
        f"write `{key} = [{_toml(value)}]`",
    )
    return [value]


def _coerce(kind: str, value: object) -> tuple[object, str]:
    """(value sd-scripts would need, problem or '') for argparse type `kind`."""
    if kind == "flag":
        if isinstance(value, bool):
            return value, ""
        return bool(value), "is not true/false; sd-scripts treats any non-empty value as true"
    if kind == "str" or kind == "Path":
        if isinstance(value, str):
            return value, ""
        return _str(value), "must be a string; sd-scripts calls string methods on it and crashes"
    if isinstance(value, str):
        number = _number(value)
        if number is None:
            return None, "must be a number"
        return (
            number,
            "is a quoted string; sd-scripts keeps it a string and fails when it computes with it",
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        # TOML spells them `nan` and `inf`; no sd-scripts setting means anything with them.
        return None, "is not a finite number"
    if kind == "int" and isinstance(value, float):
        if not -(2**63) <= value < 2**63:  # as an integer, no TOML file could hold it again
            return None, "is beyond the 64-bit integers TOML and sd-scripts can hold"
        if value.is_integer():
            return int(value), "must be an integer, not a float"
        return int(value), "must be an integer"
    return value, ""


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        try:
            result = float(text)
        except ValueError:
            return None
        return result if math.isfinite(result) else None


def _str(value: object) -> str:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return ",".join(map(str, value))
    return str(value)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _type_help(key: str, kind: str) -> str:
    if key == "resolution":
        return 'write the size as a string: `resolution = "1024,1024"`'
    if key in ("lr_warmup_steps", "lr_decay_steps"):
        return "write a step count as an integer, a ratio as a float"
    return {
        "flag": f"write `{key} = true` or `{key} = false`",
        "str": f'quote the value: `{key} = "..."`',
        "Path": f'quote the value: `{key} = "..."`',
        "int": f"write an integer without quotes: `{key} = 10`",
    }.get(kind, f"write a number without quotes: `{key} = 0.0001`")


def load_prompts(path: Path, bag: DiagnosticBag) -> list[dict] | None:
    """sample_prompts.txt lines as sd-scripts parses them (train_util.line_to_prompt_dict)."""
    if path.suffix.lower() in (".toml", ".json"):
        bag.warning(
            "I618",
            f"Sample prompts in `{path.name}` ({path.suffix} format) are not read by lorafile.",
            "use the .txt line format, or keep the file: it stays a pass-through setting",
        )
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:  # the caller's I618 says the prompts were not read
        return None
    except UnicodeDecodeError as err:
        bag.warning(
            "I618",
            f"The sample prompts file `{path}` is not UTF-8 text (byte {err.start} is invalid); "
            "its prompts are not read.",
            "save it as UTF-8 text, or pass --sample-prompts with the right file",
        )
        return None
    sub = DiagnosticBag(file=str(path), source=text)
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        prompts.append(_prompt_line(line, number, sub))
    bag.extend(sub.items)
    return prompts


def _prompt_line(line: str, number: int, bag: DiagnosticBag) -> dict:
    parts = line.split(" --")
    prompt: dict = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        match = PROMPT_OPTION.match(part.strip())
        if not match:
            bag.warning(
                "I619",
                f"`--{part.strip()}` is not a sample option sd-scripts understands; it is ignored.",
                "write options as `--w 1024` (a space, not `=`): --n --w --h --d --l --s --ss",
                span=Span(number, line.find(part) + 1),
            )
            continue
        name, value = match.group(1).lower(), match.group(2).strip()
        converted = _prompt_value(name, value)
        if converted is None:
            bag.warning(
                "I619",
                f"`--{name} {value}` is not a number; sd-scripts ignores it.",
                f"give --{name} a number",
                span=Span(number, line.find(part) + 1),
            )
            continue
        prompt[name] = converted
    return prompt


def _prompt_value(name: str, value: str) -> object:
    if name in ("w", "h", "d", "s"):
        number = _number(value)
        return int(number) if number is not None else None
    if name == "l":
        number = _number(value)
        return float(number) if number is not None else None
    return value


def read_accelerate(path: Path) -> dict:
    """Hardware from an accelerate config beside config.toml (written for several GPUs)."""
    try:
        config = yamlio.load(path.read_text(encoding="utf-8")) or {}
        machines = int(config.get("num_machines", 1) or 1)
        processes = int(config.get("num_processes", 1) or 1)
        port = int(config["main_process_port"]) if config.get("main_process_port") else None
    except (OSError, AttributeError, TypeError, ValueError, RecursionError):  # yamlio's too
        return {}  # only a hint for the GPU count and the main machine
    hardware = {"gpus": max(1, processes // max(machines, 1)), "machines": machines}
    if config.get("main_process_ip") is not None:
        hardware["main_address"] = str(config["main_process_ip"])
    if port is not None:
        hardware["main_port"] = port
    return hardware
