"""Read SimpleTuner's files into a Recipe: the inverse of `write`.

`read_recipe(path, bag)` loads the config (`load`), the multidatabackend.json and
lycoris_config.json it references, and interprets each argument as recipe semantics with
SimpleTuner's defaults filled in (an absent `lora_dropout` means 0.1, an absent
`pretrained_vae_model_name_or_path` means madebyollin/sdxl-vae-fp16-fix). Settings with no recipe
equivalent go to `passthrough["simpletuner"]` (see `passthrough`) so that writing the
recipe back loses nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import ValidationError

from lorafile.backends.simpletuner import mapping as m
from lorafile.backends.simpletuner import options as opts
from lorafile.backends.simpletuner import passthrough as pt
from lorafile.backends.simpletuner import training_options
from lorafile.backends.simpletuner.load import (
    PLACEHOLDER,
    Loaded,
    image_entries,
    is_regularisation,
    load_config,
    load_json_file,
    resolve,
)
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
from lorafile.compiler.hub import parse_hub_ref
from lorafile.spec import Recipe
from lorafile.spec.models import SCHEDULERS, WEIGHT_VARIANTS

MISSING_DATASET = "<no data backend config>"


def read_recipe(path: Path, bag: DiagnosticBag) -> Recipe:
    """The recipe a SimpleTuner config folder or file describes."""
    loaded = load_config(Path(path), bag)
    try:
        return _interpret(loaded, bag)
    # Malformed values, not a bug here; OverflowError: int() of a JSON `Infinity`.
    except (TypeError, ValueError, AttributeError, OverflowError) as err:
        bag.error(
            "I652",
            f"The SimpleTuner config has a value of the wrong kind: {err}.",
            "check the numbers and lists in the config and multidatabackend.json",
        )
        raise DiagnosticError(bag.items) from err


def _interpret(loaded: Loaded, bag: DiagnosticBag) -> Recipe:
    config = loaded.config
    _check_model(config, bag)
    entries = _data_backends(loaded, bag)
    lycoris = _lycoris_file(loaded, bag)
    prompts = _prompt_library(loaded, bag)
    data = {
        "name": _name(config),
        "base": _base(config),
        **_datasets(entries, config, bag),
        "adapter": _adapter(config, lycoris, bag),
        "train": (train := _train(config, bag)),
        "ema": {"decay": float(config.get("ema_decay", 0.995))} if config.get("use_ema") else None,
        "save": _save(config, train),
        "sample": _sample(config, prompts),
        "hardware": {"gpus": max(1, loaded.processes or int(config.get("num_processes", 1)))},
        "output": {"path": str(config.get("output_dir", opts.default("output_dir")))},
        "log": _log(config),
    }
    recipe = _validated(data, bag)
    passthrough = pt.collect(recipe, config, entries, lycoris)
    if passthrough:
        recipe = recipe.model_copy(update={"passthrough": {"simpletuner": passthrough}})
    return recipe


def _validated(data: dict, bag: DiagnosticBag) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        for problem in err.errors():
            where = ".".join(str(p) for p in problem["loc"])
            bag.error(
                "I652",
                f"The SimpleTuner config gives `{where}` a value a recipe cannot "
                f"hold: {problem['msg']}.",
                "correct the value in the config",
            )
        raise DiagnosticError(bag.items) from err


def _check_model(config: dict, bag: DiagnosticBag) -> None:
    family = config.get("model_family")
    if family is None:
        bag.warning(
            "I637",
            "`model_family` is missing (SimpleTuner requires it); it is read as `sdxl`.",
            "write `model_family: sdxl`",
        )
    elif family != "sdxl":
        bag.error(
            "I637",
            f"`model_family: {family}` is not SDXL; lorafile recipes describe SDXL "
            "LoRA training only.",
            "import an SDXL config",
        )
    model_type = config.get("model_type")
    if model_type is None:
        bag.warning(
            "I638",
            "`model_type` is missing; SimpleTuner's default is `full` (a full "
            "fine-tune); it is read as a LoRA.",
            "write `model_type: lora`",
        )
    elif model_type != "lora":
        bag.warning(
            "I638",
            f"`model_type: {model_type}` is a full fine-tune; it is read as a LoRA.",
            "write `model_type: lora`",
        )
    path = str(config.get("pretrained_model_name_or_path", ""))
    if "xl-base-2" in path or "sdxl-2" in path:
        bag.warning(
            "I653",
            f"`{path}` names an SDXL 2.0, which was never released; the SDXL "
            "family is base 1.0 and its fine-tunes.",
            "use stabilityai/stable-diffusion-xl-base-1.0 or a local SDXL checkpoint",
        )


def _name(config: dict) -> str:
    run = config.get("tracker_run_name")
    if run and run != opts.default("tracker_run_name"):
        return str(run)
    out = str(config.get("output_dir", "")).rstrip("/").rsplit("/", 1)[-1]
    return out or "simpletuner"


def _base(config: dict) -> dict:
    base = {
        "path": str(
            config.get("pretrained_model_name_or_path")
            or "stabilityai/stable-diffusion-xl-base-1.0"
        ),
        "vae": str(config.get("pretrained_vae_model_name_or_path", m.DEFAULT_VAE)),
    }
    if config.get("prediction_type") == "v_prediction":
        base["prediction"] = "v"
    revision = config.get("revision")
    if revision and parse_hub_ref(f"{base['path']}@{revision}") is not None:
        base["path"] = f"{base['path']}@{revision}"  # else kept as passthrough
    if config.get("variant") in WEIGHT_VARIANTS:
        base["variant"] = config["variant"]
    if config.get("rescale_betas_zero_snr") is True:
        base["zero_terminal_snr"] = True
    return base


def _data_backends(loaded: Loaded, bag: DiagnosticBag) -> list[dict]:
    reference = loaded.config.get("data_backend_config")
    if reference is None:
        bag.warning(
            "I634",
            "There is no `data_backend_config`, so no dataset is known; the "
            f"recipe gets the placeholder dataset `{MISSING_DATASET}`.",
            "write a multidatabackend.json and point data_backend_config at it",
        )
        return []
    file = resolve(str(reference), loaded.folder)
    data = load_json_file(file, bag, "The data backend config")
    if data is None:
        bag.warning(
            "I634",
            f"The data backend config `{reference}` was not found; the recipe "
            f"gets the placeholder dataset `{MISSING_DATASET}`.",
            "check the path (SimpleTuner resolves it from the config folder or cwd)",
        )
        return []
    if not isinstance(data, list):
        bag.error("I634", f"`{file}` must be a JSON list of datasets.", "wrap the entries in [ ]")
        return []
    defaults = [
        e
        for e in data
        if isinstance(e, dict) and e.get("dataset_type") == "text_embeds" and e.get("default")
    ]
    if len(defaults) != 1:
        bag.warning(
            "I649",
            f"`{file}` has {len(defaults)} default text_embeds datasets; "
            "SimpleTuner needs exactly one.",
            "mark one text_embeds entry default: true",
        )
    entries = [e for e in data if isinstance(e, dict)]
    _report_placeholders(entries, bag)
    return entries


def _report_placeholders(entries: list[dict], bag: DiagnosticBag) -> None:
    for entry in entries:
        for key, value in entry.items():
            for var in PLACEHOLDER.findall(value) if isinstance(value, str) else ():
                bag.info(
                    "I635",
                    f"dataset `{entry.get('id')}` {key} uses the placeholder {{env:{var}}}, "
                    "which SimpleTuner fills from the environment; it is kept as written.",
                    f"set {var} when training, or write the value",
                )


def _datasets(entries: list[dict], config: dict, bag: DiagnosticBag) -> dict:
    images = image_entries(entries, bag)
    dropout = min(max(float(config.get("caption_dropout_probability", 0.1)), 0.0), 1.0)
    triggers: list[str] = []
    datasets = [
        _dataset(e, config, dropout, triggers, bag) for e in images if not is_regularisation(e)
    ]
    regs = [_regularization(e, bag) for e in images if is_regularisation(e)]
    if not datasets:
        datasets = [{"path": MISSING_DATASET, "caption_dropout": dropout}]
    if len(set(triggers)) > 1:
        bag.warning(
            "I650",
            f"The datasets prepend different instance prompts ({', '.join(triggers)})"
            f"; the recipe's one trigger is `{triggers[0]}`.",
            "use one trigger",
        )
    out: dict = {"datasets": datasets, "regularization": regs}
    if triggers:
        out["trigger"] = triggers[0]
    return out


def _dataset(entry: dict, config: dict, dropout: float, triggers: list, bag) -> dict:
    path = str(entry.get("instance_data_dir") or entry.get("aws_data_prefix") or entry.get("id"))
    strategy = entry.get("caption_strategy", config.get("caption_strategy", "filename"))
    prompt = entry.get("instance_prompt", config.get("instance_prompt"))
    prepend = entry.get("prepend_instance_prompt", config.get("prepend_instance_prompt"))
    ds: dict = {"path": path, "caption_dropout": dropout}
    if strategy in ("instanceprompt", "instance_prompt"):
        ds["captions"] = "trigger"
        if prompt:
            triggers.append(str(prompt))
    else:
        if strategy not in ("textfile", "filename"):
            bag.warning(
                "I647",
                f"dataset `{entry.get('id')}` reads captions with "
                f"`{strategy}`, which a recipe cannot express; it is read as `.txt` "
                "files.",
                "export the captions as .txt files",
            )
        ds["captions"] = "filename" if strategy == "filename" else "txt"
        if prompt and prepend:
            triggers.append(str(prompt))
    ds["repeats"] = max(0, int(entry.get("repeats", 0))) + 1  # SimpleTuner N = kohya N+1
    side = _side(entry, config, bag)
    ds["resolution"] = {"width": side, "height": side}
    ds["buckets"] = _buckets(entry, side)
    shuffle = entry.get("caption_shuffle")
    if isinstance(shuffle, dict) and shuffle.get("enable"):
        ds["shuffle_captions"] = True
        ds["keep_tokens"] = min(max(int(shuffle.get("position_start", 0) or 0), 0), 75)
    return ds


def _side(entry: dict, config: dict, bag: DiagnosticBag) -> int:
    value = float(entry.get("resolution", config.get("resolution", 1024)))
    kind = entry.get("resolution_type", config.get("resolution_type", "pixel_area"))
    if kind == "area" and value < 100:
        value = math.sqrt(value * 1_000_000)  # megapixels
    elif kind == "pixel":
        bag.info(
            "I648",
            f"dataset `{entry.get('id')}` sizes images by their short edge "
            f"({int(value)} px); the recipe trains at the same area, {int(value)}².",
            "use resolution_type pixel_area for the recipe's meaning",
        )
    return min(max(round(value), 64), 8192)


def _buckets(entry: dict, side: int) -> dict:
    if entry.get("crop") is True:
        return {"enabled": False}
    low, high = entry.get("minimum_aspect_ratio"), entry.get("maximum_aspect_ratio")
    limits = (float(low), float(high)) if low is not None and high is not None else None
    return m.limits_to_buckets(limits, side).model_dump()


def _regularization(entry: dict, bag: DiagnosticBag) -> dict:
    path = str(entry.get("instance_data_dir") or entry.get("id"))
    prompt = entry.get("instance_prompt")
    if entry.get("caption_strategy") not in ("instanceprompt", "instance_prompt") or not prompt:
        bag.warning(
            "I647",
            f"regularisation dataset `{entry.get('id')}` has no class prompt "
            "(caption_strategy instanceprompt with instance_prompt); the recipe's class "
            "is its folder name.",
            "give the class prompt as instance_prompt",
        )
        prompt = prompt or path.rstrip("/").rsplit("/", 1)[-1] or "class"
    ratio = float(entry.get("probability", 1.0))
    return {
        "path": path,
        "class_prompt": str(prompt),
        "ratio": min(ratio, 100.0) if ratio > 0 else 1.0,
    }


def _lycoris_file(loaded: Loaded, bag: DiagnosticBag) -> dict | None:
    if loaded.config.get("lora_type") != "lycoris":
        return None
    reference = str(loaded.config.get("lycoris_config", opts.default("lycoris_config")))
    file = resolve(reference, loaded.folder)
    data = load_json_file(file, bag, "The LyCORIS config")
    if not isinstance(data, dict):
        bag.warning(
            "I643",
            f"The LyCORIS config `{reference}` was not found; the adapter is "
            "read as LoCon with the config's rank.",
            "check lycoris_config's path",
        )
        return {}
    return data


def _prompt_library(loaded: Loaded, bag: DiagnosticBag) -> list[str]:
    reference = loaded.config.get("user_prompt_library")
    if not reference:
        return []
    data = load_json_file(resolve(str(reference), loaded.folder), bag, "The prompt library")
    if not isinstance(data, dict):
        bag.warning(
            "I654",
            f"The prompt library `{reference}` was not found; its prompts are not imported.",
            "check user_prompt_library's path",
        )
        return []
    return [str(v if not isinstance(v, dict) else v.get("prompt", "")) for v in data.values()]


def _adapter(config: dict, lycoris: dict | None, bag: DiagnosticBag) -> dict:
    if lycoris is None:
        adapter: dict = {
            "algo": "lora",
            "rank": min(max(int(config.get("lora_rank", 16)), 1), 1024),
            "alpha": config.get("lora_alpha"),
            "dropout": float(config.get("lora_dropout", 0.1)),  # SimpleTuner default 0.1
            "targets": pt.peft_targets(config.get("peft_lora_target_modules"), bag),
            "text_encoder": bool(config.get("train_text_encoder", False)),
            "dora": bool(config.get("use_dora", False)),
        }
        return adapter
    return _lycoris_adapter(lycoris, bag)


def _lycoris_adapter(lycoris: dict, bag: DiagnosticBag) -> dict:
    algo = str(lycoris.get("algo", "locon"))
    if algo not in ("locon", "loha", "lora", "lokr"):
        bag.warning(
            "I643",
            f"LyCORIS algo `{algo}` has no recipe equivalent; it is read as LoCon.",
            "use locon, loha or lokr",
        )
    rank = int(lycoris.get("linear_dim", 16))
    if not 1 <= rank <= 1024:
        bag.warning(
            "I643",
            f"LyCORIS linear_dim {rank} is outside a recipe's rank range "
            "(1-1024); it is read as the nearest rank.",
            "use a rank up to 1024",
        )
        rank = min(max(rank, 1), 1024)
    targets = pt.lycoris_targets(lycoris.get("apply_preset"), bag)
    adapter: dict = {
        "algo": pt.lycoris_algo(algo),
        "rank": rank,
        "alpha": float(lycoris.get("linear_alpha", rank)),
        "dropout": float(lycoris.get("dropout", 0.0)),
        "targets": targets,
    }
    dora = bool(lycoris.get("dora_wd", lycoris.get("weight_decompose", False)))
    if dora and adapter["algo"] != "locon":
        bag.warning(
            "I643",
            f"LyCORIS DoRA (`dora_wd`) on {algo} has no recipe equivalent; it is dropped.",
            "use DoRA with locon (or `use_dora` with a PEFT LoRA)",
        )
    adapter["dora"] = dora and adapter["algo"] == "locon"
    factor = int(lycoris.get("factor", -1))
    if adapter["algo"] == "lokr" and factor > 0:
        adapter["factor"] = factor
    if "conv" in targets:
        adapter["conv_rank"] = int(lycoris.get("conv_dim", rank))
        adapter["conv_alpha"] = float(lycoris.get("conv_alpha", adapter["conv_rank"]))
    return adapter


def _train(config: dict, bag: DiagnosticBag) -> dict:
    steps = int(config.get("max_train_steps") or 0)
    epochs = int(config.get("num_train_epochs", 1) or 0)
    scheduler = str(config.get("lr_scheduler", "constant_with_warmup"))
    if scheduler not in SCHEDULERS:
        bag.warning(
            "I639",
            f"`lr_scheduler: {scheduler}` has no recipe equivalent; it is read as `cosine`.",
            "use one of " + ", ".join(SCHEDULERS),
        )
        scheduler = "cosine"
    train: dict = {
        "batch": int(config.get("train_batch_size", 4)),
        "accumulate": int(config.get("gradient_accumulation_steps", 1)),
        "lr": float(config.get("learning_rate", 4e-7)),
        "scheduler": scheduler,
        "precision": config.get("mixed_precision", "bf16")
        if config.get("mixed_precision", "bf16") in ("no", "fp16", "bf16")
        else "bf16",
        "checkpointing": bool(config.get("gradient_checkpointing", True)),
        "cache": {"latents": True, "text": True, "location": "disk"},
        "max_grad_norm": float(config.get("max_grad_norm", 2.0)),
        **({"steps": steps} if steps > 0 else {"epochs": max(epochs, 1)}),
    }
    warmup = int(config.get("lr_warmup_steps", 0) or 0)
    if warmup:
        train["warmup"] = {"value": warmup}
    if scheduler == "cosine_with_restarts" and "lr_num_cycles" in config:
        train["cycles"] = int(config["lr_num_cycles"])
    if scheduler == "polynomial":
        power = float(config.get("lr_power", 0.8))
        train["power"] = None if power == 1.0 else power
    if config.get("seed") is not None:
        train["seed"] = int(config["seed"])
    if config.get("base_model_default_dtype") == "fp32" and train["precision"] != "no":
        # mixed_precision=no is all fp32 already; otherwise fp32 base weights are explicit.
        train["base_precision"] = "fp32"
    if config.get("snr_gamma") is not None:
        train["min_snr_gamma"] = float(config["snr_gamma"])
    train.update(pt.optimizer(config, bag))
    train["noise_offset"] = _noise_offset(config, bag)
    if train["noise_offset"]:
        train["noise_offset_probability"] = float(config.get("noise_offset_probability", 0.25))
    train.update(training_options.read_args(config))
    return train


def _noise_offset(config: dict, bag: DiagnosticBag) -> float:
    if not config.get("offset_noise"):
        if config.get("noise_offset"):
            bag.warning(
                "I645",
                "`noise_offset` is set without `offset_noise: true`, so "
                "SimpleTuner applies no offset noise; it is read as 0.",
                "add `offset_noise: true` (and noise_offset_probability 1.0)",
            )
        return 0.0
    return float(config.get("noise_offset", 0.1))


def _save(config: dict, train: dict) -> dict:
    save: dict = {"layout": "kohya" if config.get("lora_format") == "comfyui" else "diffusers"}
    steps = int(config.get("checkpoint_step_interval", 500) or 0)
    epochs = int(config.get("checkpoint_epoch_interval") or 0)
    if steps:
        save["every"] = {"every": steps, "unit": "steps"}
    elif epochs:
        save["every"] = {"every": epochs, "unit": "epochs"}
    limit = int(config.get("checkpoints_total_limit", 5) or 0)
    if "every" in save and limit > 0:
        every = save["every"]
        total = train.get(every["unit"])  # "steps" or "epochs"
        # A limit covering every checkpoint of the run is the recipe's "keep all".
        if total is None or limit < total // every["every"]:
            save["keep"] = limit
    return save


def _sample(config: dict, library: list[str]) -> dict | None:
    prompts = [str(config.get("validation_prompt") or "")]
    prompts = [p for p in prompts + library if p.strip()]  # SimpleTuner drops blank values
    if config.get("validation_disable") or not prompts:
        return None
    steps = int(config.get("validation_step_interval", 100) or 0)
    epochs = int(config.get("validation_epoch_interval") or 0)
    every = {"every": steps} if steps else {"every": max(epochs, 1), "unit": "epochs"}
    sample: dict = {
        "every": every,
        "prompts": [str(p) for p in prompts],
        "sampler": m.SAMPLER_FROM_ST.get(str(config.get("validation_noise_scheduler")), "ddim"),
        "steps": int(config.get("validation_num_inference_steps", 30)),
        "cfg": float(config.get("validation_guidance", 7.5)),
        "negative": str(config.get("validation_negative_prompt") or m.DEFAULT_NEGATIVE),
        "size": _validation_size(str(config.get("validation_resolution", "256"))),
    }
    if config.get("validation_seed") is not None:
        sample["seed"] = int(config["validation_seed"])
    return sample


def _validation_size(text: str) -> dict:
    """The first of `validation_resolution`'s sizes ("1024", "1024x768", "1024x1024,1280x768")."""
    first = text.split(",")[0].strip().lower()
    width, _, height = first.partition("x")
    try:
        w = int(float(width))
        h = int(float(height)) if height else w
    except ValueError:
        w = h = 256
    return {"width": min(max(w, 64), 8192), "height": min(max(h, 64), 8192)}


def _log(config: dict) -> dict:
    to = str(config.get("report_to", "none"))
    log: dict = {"to": to if to in ("none", "tensorboard", "wandb") else "none"}
    if config.get("logging_dir") not in (None, opts.default("logging_dir")):
        log["path"] = str(config["logging_dir"])
    return log
