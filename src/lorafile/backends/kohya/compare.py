"""When two kohya values mean the same run (for the pass-through and for `project`).

sd-scripts gives many spellings one meaning: `network_alpha` 16 and 16.0, `text_encoder_lr` as
a float or a one-element list, LyCORIS' implicit `preset=full` and `conv_dim=network_dim`,
Adafactor's implicit `relative_step=True`. These helpers compare meanings, not spellings.
"""

from __future__ import annotations

from lorafile.backends.kohya import mapping as km
from lorafile.backends.kohya import read as kr
from lorafile.backends.kohya import schema

TIMESTEP_ENDS = {"min_timestep": 0, "max_timestep": 1000}


def same_dataset_value(key: str, old: object, new: object) -> bool:
    if key == "resolution":
        return km.resolution(old) == km.resolution(new)
    return _equal(old, new)


def same(key: str, old: object, new: object, old_args: dict, new_args: dict) -> bool:
    """Whether two values of one flat option mean the same run."""
    if key == "network_args":
        return _network(old_args) == _network(new_args)
    if key == "optimizer_args":
        return _optimizer(old_args) == _optimizer(new_args)
    if key == "text_encoder_lr":
        return _equal(_as_list(old), _as_list(new))
    if key == "save_precision":
        return (old or "float") == (new or "float")
    if key == "max_token_length":  # 75 is the CLIP length sd-scripts uses for None
        return (old or 75) == (new or 75)
    if key == "log_with":  # a logging_dir alone means tensorboard (train_util)
        return _log(old, old_args) == _log(new, new_args)
    if key == "optimizer_type":  # "" means AdamW; names are case-insensitive
        return str(old or "adamw").lower() == str(new or "adamw").lower()
    if key == "sample_sampler":
        return _sampler(old) == _sampler(new)
    if key in TIMESTEP_ENDS:  # None is the whole schedule: 0..num_train_timesteps
        return (old if old is not None else TIMESTEP_ENDS[key]) == (
            new if new is not None else TIMESTEP_ENDS[key]
        )
    if key == "clip_skip":  # sdxl_train_util ignores it: the penultimate layers feed the UNet
        return True
    return _equal(old, new)


def _equal(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def _network(args: dict) -> dict:
    kwargs = km.network_kwargs(args.get("network_args"))
    dim = args.get("network_dim") or 4
    alpha = float(args.get("network_alpha") or dim)
    if args.get("network_module") == "lycoris.kohya":
        kwargs["algo"] = {"lora": "locon"}.get(kwargs.get("algo", "lora"), kwargs.get("algo"))
        kwargs.setdefault("preset", "full")
        kwargs.setdefault("conv_dim", str(dim))
        kwargs.setdefault("conv_alpha", str(alpha))
        if km._int(kwargs.get("factor")) == -1:
            del kwargs["factor"]  # LyCORIS' default: automatic split
        if "dora_wd" in kwargs:
            kwargs["dora_wd"] = km.lycoris_bool(kwargs["dora_wd"])
    elif "conv_dim" in kwargs:
        kwargs.setdefault("conv_alpha", "1")
    for key in ("conv_dim", "conv_alpha"):
        if key in kwargs:
            kwargs[key] = km._float(kwargs[key])
    return kwargs


def _optimizer(args: dict) -> dict:
    family = str(args.get("optimizer_type") or "").lower()
    values = {key: schema.literal(text) for key, text in schema.optimizer_args(args).items()}
    if family == "adafactor":
        values = schema.ADAFACTOR_DEFAULTS | values
    return values


def _sampler(name: object) -> str:
    name = str(name or "ddim").lower()
    return kr.KOHYA_SAMPLERS.get(name, name)


def _log(value: object, args: dict) -> object:
    return value or ("tensorboard" if args.get("logging_dir") else None)
