"""The native plan: a recipe with every setting resolved, ready for the trainer.

`build_plan` turns a Recipe into a JSON-ready dict (written as `plan.json` by the native
backend): defaults filled in, steps computed from epochs (which needs the image counts, so the
dataset folders are scanned when they exist), the bucket table, the memory measures chosen, and
the file list with content hashes. It imports neither torch nor diffusers: it runs on the
compile path. `describe_plan` prints it for people (`lorafile plan`).
"""

from __future__ import annotations

import math
from pathlib import Path

from lorafile.compiler import dataset_count
from lorafile.compiler import hub as hub_refs
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.files import is_dir
from lorafile.runtime.train import data
from lorafile.runtime.train.diffusion import schedule_overrides  # no torch at import
from lorafile.spec import Recipe

PLAN_VERSION = 1


resolve_path = dataset_count.resolve
"""Recipe paths are relative to the recipe's folder (or the working folder); one rule for the
native plan and the compile path's image counts."""


def scan_recipe(recipe: Recipe, base_dir: Path | None, bag: DiagnosticBag):
    """Scan every dataset and regularization folder: (items, per-folder summaries, scans).

    Missing folders are a warning here (the plan can still be written); callers that need the
    images (epochs, training) turn an empty result into an error.
    """
    items: list[data.ImageItem] = []
    summaries: dict[str, list[dict]] = {"datasets": [], "regularization": []}
    scans: list[data.ScanResult] = []
    specs = [(d, False, i, None) for i, d in enumerate(recipe.datasets)]
    specs += [(r, True, i, r.class_prompt) for i, r in enumerate(recipe.regularization)]
    for spec, is_reg, index, class_prompt in specs:
        folder = resolve_path(spec.path, base_dir)
        summary = {"path": str(folder), "images": 0, "skipped": [], "missing_captions": 0}
        summaries["regularization" if is_reg else "datasets"].append(summary)
        if not is_dir(folder):  # a path too long to look up is "not here" too
            bag.warning(
                "T560",
                f"The {'regularization ' if is_reg else ''}folder `{folder}` does not exist here.",
                "create it, or compile on the machine that trains; image counts, buckets and "
                "the file list are left empty",
            )
            continue
        # Regularization images train at the first dataset's resolution and buckets.
        dataset = recipe.datasets[0] if is_reg else spec
        scan = data.scan_folder(
            folder,
            captions=dataset.captions,
            trigger=recipe.trigger,
            source=index,
            bucketing=data.BucketSpec.from_dataset(dataset),
            is_reg=is_reg,
            class_prompt=class_prompt,
        )
        scans.append(scan)
        items += scan.items
        summary.update(
            images=len(scan.items),
            skipped=[{"path": p, "reason": r} for p, r in scan.skipped],
            missing_captions=len(scan.missing_captions),
        )
        _report_scan(bag, folder, scan)
    return items, summaries, scans


def _report_scan(bag: DiagnosticBag, folder: Path, scan: data.ScanResult) -> None:
    for path, reason in scan.bad_captions:
        bag.error(
            "T568",
            f"The caption file `{path}` is {reason}.",
            're-save it as UTF-8 (e.g. `iconv -f cp1252 -t utf-8 OLD > NEW`, or "Save as '
            'UTF-8" in an editor), or remove it to train that image with the trigger alone',
        )
    for path, reason in scan.skipped:
        bag.warning(
            "T561",
            f"Skipping the unreadable image `{path}` ({reason}).",
            "re-export or remove the file",
        )
    if scan.missing_captions:
        bag.warning(
            "T562",
            f"{len(scan.missing_captions)} images in `{folder}` have no caption file; they train with the trigger alone.",
            "add a caption file next to each image, or set `captions trigger` in the dataset",
        )


def _repeats(recipe: Recipe) -> list[int]:
    return [d.repeats for d in recipe.datasets]


def _reg_ratio(recipe: Recipe) -> float:
    return recipe.regularization[0].ratio if recipe.regularization else 0.0


def _steps(recipe: Recipe, items: list[data.ImageItem], bag: DiagnosticBag) -> dict:
    """Total optimizer steps, batches and steps per epoch, epochs (fractional when from steps)."""
    train = recipe.train
    gpus = recipe.hardware.gpus * recipe.hardware.machines
    batches = data.batches_per_epoch(items, _repeats(recipe), _reg_ratio(recipe), train.batch)
    per_epoch = math.ceil(batches / (train.accumulate * gpus)) if batches else 0
    if train.steps is not None:
        steps = train.steps
    elif per_epoch:
        steps = train.epochs * per_epoch
    else:
        bag.error(
            "T563",
            f"`train {{ epochs {train.epochs} }}` needs the images to count steps, and none were found.",
            "compile where the dataset folders exist, or give `steps` instead of `epochs`",
        )
        steps = 0
    epochs = round(steps / per_epoch, 3) if per_epoch else None
    return {
        "steps": steps,
        "batches_per_epoch": batches,
        "steps_per_epoch": per_epoch,
        "epochs": epochs,
    }


def _every_steps(interval, per_epoch: int) -> int | None:
    if interval is None:
        return None
    return interval.every if interval.unit == "steps" else interval.every * max(per_epoch, 1)


def memory_measures(recipe: Recipe, bag: DiagnosticBag) -> dict:
    """The memory measures the run uses (after `memory auto` has been applied by `fit_memory`)."""
    train = recipe.train
    cache_text = train.cache.text and not recipe.adapter.text_encoder
    if train.cache.text and not cache_text:
        bag.warning(
            "T564",
            "Text-encoder outputs cannot be cached while the text encoders are trained.",
            "remove `text` from `cache`, or set `text_encoder off` in the adapter",
        )
    shuffled = any(d.shuffle_captions for d in recipe.datasets)
    if cache_text and shuffled:
        bag.warning(
            "T565",
            "Text-encoder outputs are not cached because captions are shuffled every step.",
            "turn off `shuffle_captions` to cache them (kohya refuses this combination)",
        )
        cache_text = False
    cache_latents = train.cache.latents
    if cache_latents and any(d.color_aug for d in recipe.datasets):
        bag.warning(
            "T567",
            "Latents are not cached because color augmentation changes the pixels every step.",
            "turn off `color_aug` to cache latents (kohya refuses this combination)",
        )
        cache_latents = False
    return {
        "gradient_checkpointing": train.checkpointing,
        "cache_latents": cache_latents,
        "cache_text": cache_text,
        "cache_location": train.cache.location,
        "optimizer": train.optimizer,
        "mixed_precision": train.precision,
        "base_precision": train.effective_base_precision,
        "attention": "sdpa",
        "free_encoders_after_caching": cache_latents and cache_text,
    }


def fit_memory(recipe: Recipe, bag: DiagnosticBag) -> tuple[Recipe, list[str]]:
    """`memory auto`: the recipe with the cheapest measures that fit the hardware's VRAM
    (compiler/fit.py), and one line per change saying why. Identity for `memory manual`."""
    if recipe.train.memory != "auto":
        return recipe, []
    from lorafile.compiler import fit
    from lorafile.spec import gpus

    hw = recipe.hardware
    gpu = gpus.find(hw.gpu) if hw.gpu else None
    budget = hw.vram or (gpu.budget_bytes if gpu else None)
    if budget is None:
        bag.warning(
            "T566",
            "`memory auto` needs to know the GPU's memory; the recipe's settings are used as written.",
            'add `gpu "RTX 4090"` or `vram 24GB` to the hardware block',
        )
        return recipe, []
    fitted, report = fit.fit_recipe(recipe, budget, trainer="native")
    return fitted, [f"{change}: {why}" for change, why in report.switched]


def vram_estimate(recipe: Recipe) -> int | None:
    """The lint model's peak-VRAM estimate in bytes (None when it cannot estimate)."""
    try:
        from lorafile.compiler import vram

        return int(vram.estimate(recipe, "native").total_bytes)
    except Exception:  # the estimate is advisory; a plan never fails because of it
        return None


def model_location(text: str | None, base_dir: Path | None) -> str | None:
    """What the trainer loads: a hub reference as written (resolved when training starts, so a
    plan moves between machines), a path made absolute."""
    if text is None:
        return None
    return text if hub_refs.is_hub_ref(text, base_dir) else str(resolve_path(text, base_dir))


def where_model_is(text: str | None, base_dir: Path | None) -> str | None:
    """For people: where a model resolves to now (compiler/hub.py describe_location)."""
    return None if text is None else hub_refs.describe_location(text, base_dir)


def _files(items: list[data.ImageItem], scans: list[data.ScanResult]) -> list[dict]:
    files = [
        {
            "path": it.path,
            "sha256": it.sha256,
            "role": "regularization" if it.is_reg else "image",
            "size": [it.width, it.height],
            "bucket": list(it.bucket),
            "caption": it.caption,
        }
        for it in items
    ]
    for scan in scans:
        files += [
            {"path": p, "sha256": h, "role": "caption"}
            for p, h in sorted(scan.caption_files.items())
        ]
    return files


def _sample(recipe: Recipe, per_epoch: int) -> dict | None:
    s = recipe.sample
    if s is None:
        return None
    return {
        "every_steps": _every_steps(s.every, per_epoch),
        "sampler": s.sampler,
        "steps": s.steps,
        "cfg": s.cfg,
        "seed": s.seed if s.seed is not None else 0,
        "size": [s.size.width, s.size.height],
        "negative": s.negative,
        "prompts": list(s.prompts),
        # Samples use the schedule the model was trained for.
        "schedule": schedule_overrides(recipe.base.prediction, recipe.base.zero_terminal_snr),
        "guidance_rescale": ZERO_SNR_GUIDANCE_RESCALE if recipe.base.zero_terminal_snr else 0.0,
    }


ZERO_SNR_GUIDANCE_RESCALE = 0.7
"""CFG rescale for zero-terminal-SNR models: Lin et al. 2024 (section 3.4) use phi = 0.7."""


def check_layout(algo: str, layout: str, bag: DiagnosticBag) -> None:
    """Refuse before training what the export would refuse after it (F711)."""
    if algo == "lokr" and layout == "diffusers":
        bag.error(
            "F711",
            "LoKr adapters have no diffusers layout for SDXL (diffusers cannot load them).",
            "use `save { layout kohya }` (ComfyUI, A1111 and LyCORIS load it)",
        )


def choose_auto(recipe: Recipe) -> tuple[Recipe, list]:
    """`checkpointing auto` and `cache auto` chosen against the recipe's hardware budget
    (compiler/vram.py `resolve_auto`). Without a budget checkpointing stays `auto`: the
    trainer decides at start from the device it runs on (runtime/train/choices.py `choose_checkpointing`)."""
    from lorafile.compiler import vram

    return vram.resolve_auto(recipe, vram.hardware_budget(recipe), "native", device=None)


def build_plan(recipe: Recipe, bag: DiagnosticBag, base_dir: Path | None = None) -> dict:
    """Resolve every setting of `recipe` into the plan dict (see the module docstring)."""
    checkpointing_auto = recipe.train.checkpointing == "auto"
    written = recipe
    recipe, choices = choose_auto(recipe)
    recipe, auto_changes = fit_memory(recipe, bag)
    check_layout(recipe.adapter.algo, recipe.save.layout, bag)
    items, summaries, scans = scan_recipe(recipe, base_dir, bag)
    counts = _steps(recipe, items, bag)
    train, adapter = recipe.train, recipe.adapter
    gpus = recipe.hardware.gpus * recipe.hardware.machines
    out = resolve_path(recipe.output.path, base_dir)
    resolved = {
        **counts,
        "seed": train.seed,
        "effective_batch": train.batch * train.accumulate * gpus,
        "warmup_steps": train.warmup.steps(counts["steps"]) if train.warmup else 0,
        "unet_lr": train.unet_lr if train.unet_lr is not None else train.lr,
        "text_encoder_lr": train.text_encoder_lr if train.text_encoder_lr is not None else train.lr,
        "adapter": {
            "algo": adapter.algo,
            "rank": adapter.rank,
            "alpha": adapter.effective_alpha,
            "conv_rank": adapter.effective_conv_rank,
            "conv_alpha": adapter.effective_conv_alpha,
            "targets": list(adapter.targets),
            "dropout": adapter.dropout,
            "text_encoder": adapter.text_encoder,
            "factor": adapter.factor,
            "dora": adapter.dora,
        },
        "ema": None if recipe.ema is None else {"decay": recipe.ema.decay},
        "save": {
            "every_steps": _every_steps(recipe.save.every, counts["steps_per_epoch"]),
            "keep": recipe.save.keep,
            "precision": recipe.save.precision,
            "layout": recipe.save.layout,
        },
        "sample": _sample(recipe, counts["steps_per_epoch"]),
        "output": {"path": str(out), "name": recipe.output_name},
        "log": {
            "to": recipe.log.to,
            "path": str(
                resolve_path(recipe.log.path, base_dir) if recipe.log.path else out / "logs"
            ),
        },
        "base": model_location(recipe.base.path, base_dir),
        "vae": model_location(recipe.base.vae, base_dir),
        "models": {
            "base": where_model_is(recipe.base.path, base_dir),
            "vae": where_model_is(recipe.base.vae, base_dir),
        },
    }
    return {
        "lorafile_plan": PLAN_VERSION,
        "base_dir": str(base_dir or Path.cwd()),
        # The recipe as written (`auto` kept: the trainer finishes the choice on its device);
        # with `memory auto`, as fitted. The chosen measures are in "memory".
        "recipe": (recipe if recipe.train.memory == "auto" else written).model_dump(mode="json"),
        "resolved": resolved,
        "memory": {
            **memory_measures(recipe, bag),
            "checkpointing_auto": checkpointing_auto,
            "auto_choices": [c.line() for c in choices],
            "auto_changes": auto_changes,
            "vram_estimate_bytes": vram_estimate(recipe),
        },
        **summaries,
        "buckets": data.bucket_table([it for it in items if not it.is_reg]),
        "files": _files(items, scans),
    }


OUTPUT = ("path", "name")
"""The keys of a plan's `resolved.output`: the output folder and the run's name."""


def plan_problem(plan: object) -> str:
    """What makes `plan` (a parsed plan.json) not one `build_plan` wrote ('' when nothing):
    the sections the trainer and `describe_plan` read, and their kinds (an edited or damaged
    file), and the recipe in it."""
    if not isinstance(plan, dict) or "lorafile_plan" not in plan:
        return "it holds no JSON object with `lorafile_plan`"
    resolved = plan.get("resolved")
    if not isinstance(resolved, dict) or not isinstance(plan.get("recipe"), dict):
        return "it has no `resolved` and `recipe` sections"
    output = resolved.get("output")
    if not isinstance(output, dict) or not all(isinstance(output.get(k), str) for k in OUTPUT):
        return "its `resolved.output` names no output folder and name"
    if not isinstance(resolved.get("base"), str):
        return "its `resolved` section names no base model"
    if not isinstance(resolved.get("steps"), int) or not isinstance(plan.get("memory"), dict):
        return "its `resolved.steps` is not a number or its `memory` not a section"
    for key in ("datasets", "buckets", "files"):
        items = plan.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return f"its `{key}` is not a list of sections"
    return _recipe_problem(plan["recipe"])


def _recipe_problem(recipe: dict) -> str:
    from pydantic import ValidationError

    try:
        Recipe.model_validate(recipe)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"its `recipe.{where}` is not valid ({first['msg']})"
    return ""


def recipe_of(plan: dict) -> Recipe:
    """The Recipe a plan was built from."""
    return Recipe.model_validate(plan["recipe"])


def _ema_words(ema: dict | None) -> str:
    return f"decay {ema['decay']:g}, written as a second file" if ema else "none"


def describe_plan(plan: dict) -> str:
    """The plan for people: one section per concern, aligned key/value lines."""
    r, m = plan["resolved"], plan["memory"]
    a = r["adapter"]
    est = m.get("vram_estimate_bytes")
    lines = [
        f"plan for {r['output']['name']} (base {r['base']})",
        "",
        "training",
        f"  steps            {r['steps']} "
        + (
            f"({r['steps_per_epoch']} per epoch, {r['epochs']} epochs)"
            if r["steps_per_epoch"]
            else "(epochs unknown: no images found)"
        ),
        f"  batch            {plan['recipe']['train']['batch']} x accumulate {plan['recipe']['train']['accumulate']} = effective {r['effective_batch']}",
        f"  learning rate    unet {r['unet_lr']:g}, text encoders {r['text_encoder_lr']:g}, warmup {r['warmup_steps']} steps",
        f"  seed             {r['seed'] if r['seed'] is not None else 'random (recorded at start)'}",
        f"  base model       {r.get('models', {}).get('base') or r['base']}",
        *([f"  vae              {r['models']['vae']}"] if r.get("models", {}).get("vae") else []),
        f"  adapter          {a['algo']} rank {a['rank']} alpha {a['alpha']:g} on {', '.join(a['targets'])}"
        + (" + text encoders" if a["text_encoder"] else "")
        + (" (DoRA)" if a.get("dora") else ""),
        f"  ema              {_ema_words(r.get('ema'))}",
        "",
        "memory",
    ]
    hidden = ("vram_estimate_bytes", "auto_changes", "auto_choices", "checkpointing_auto")
    lines += [f"  {k:<16} {v}" for k, v in m.items() if k not in hidden]
    lines += [f"  auto: {choice}" for choice in m.get("auto_choices", [])]
    lines += [f"  auto: {change}" for change in m.get("auto_changes", [])]
    lines.append(f"  {'vram estimate':<16} {f'{est / 2**30:.1f} GiB' if est else 'not available'}")
    lines += ["", "data"]
    for d in plan["datasets"] + plan["regularization"]:
        lines.append(
            f"  {d['path']}: {d['images']} images, {len(d['skipped'])} skipped, {d['missing_captions']} without captions"
        )
    lines.append(
        "  buckets          "
        + (
            ", ".join(f"{b['size'][0]}x{b['size'][1]}:{b['images']}" for b in plan["buckets"])
            or "none"
        )
    )
    save, sample = r["save"], r["sample"]
    lines += ["", "outputs", f"  folder           {r['output']['path']}"]
    lines.append(
        f"  save             every {save['every_steps']} steps, keep {save['keep'] or 'all'}, {save['layout']} {save['precision']}"
        if save["every_steps"]
        else f"  save             final adapter only, {save['layout']} {save['precision']}"
    )
    if sample:
        lines.append(
            f"  sample           every {sample['every_steps']} steps, {sample['sampler']}, {len(sample['prompts'])} prompts"
        )
    lines.append(f"  files            {len(plan['files'])} hashed")
    return "\n".join(lines)
