"""`lorafile caption`: write a caption file for every image that has none, with a VLM.

The default model is Florence-2 through transformers' own `Florence2ForConditionalGeneration`
(no `trust_remote_code`) with its detailed-caption task. Any other local or named model that
transformers' Auto classes load for image-text-to-text (LLaVA-style chat models, prompted with
their chat template) or vision-to-text (BLIP-style captioners) works too. The hub is contacted
only for a model given by hub name; a local folder is loaded with `local_files_only`.

Idempotent and resumable: images that already have a caption file are skipped (unless
`overwrite`), and each batch's captions are written atomically as soon as they are generated,
so a crash loses at most the batch in flight and a second run writes nothing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.compiler.dataset_count import NATIVE, ImageRule, list_images
from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError, first_line
from lorafile.files import write_text_atomic
from lorafile.runtime.train.data import with_trigger

DEFAULT_MODEL = "florence-community/Florence-2-large"
"""Florence-2 large converted for transformers' built-in Florence2 classes."""
FLORENCE_TASK = "<DETAILED_CAPTION>"
CHAT_PROMPT = (
    "Describe this image in one or two sentences: the subject, the setting, the lighting and "
    "the composition. Do not name an art style or an artist."
)
MAX_NEW_TOKENS = 96
"""CLIP reads 75 caption tokens; a little more leaves room for words `--remove` strips."""


@dataclass(frozen=True)
class CaptionOptions:
    model: str = DEFAULT_MODEL
    trigger: str | None = None
    """Prepended to every new caption (runtime/train/data.py `with_trigger`: once, comma-separated)."""
    prompt: str | None = None
    """Florence-2 task token, a chat model's instruction, or a BLIP-style prefix."""
    remove: tuple[str, ...] = ()
    overwrite: bool = False
    batch: int = 4
    extension: str = "txt"
    rule: ImageRule = NATIVE
    max_new_tokens: int = MAX_NEW_TOKENS


@dataclass
class CaptionResult:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    """Images whose caption file exists and was left alone."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """Images that could not be read, or for which the model returned no text."""


def caption_file(image: Path, extension: str) -> Path:
    return image.with_suffix("." + extension.lstrip("."))


def pending(folder: Path, options: CaptionOptions) -> tuple[list[Path], list[Path]]:
    """(images to caption, images whose caption file is kept)."""
    todo, kept = [], []
    for image in list_images(folder, options.rule):
        has = caption_file(image, options.extension).is_file()
        (kept if has and not options.overwrite else todo).append(image)
    return todo, kept


def clean_caption(text: str, remove: tuple[str, ...], trigger: str | None) -> str:
    """One line: `remove` phrases taken out (whole words, any case), the trigger first."""
    for phrase in sorted(remove, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", " ", text, flags=re.I)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = text.strip(" ,;:")
    return with_trigger(text, trigger) if text or trigger else ""


def caption_folder(
    folder: Path,
    options: CaptionOptions,
    progress: bool | None = None,
    load: Callable[[str], Captioner] | None = None,
) -> CaptionResult:
    """Caption every image of `folder` without a caption file; see the module docstring."""
    todo, kept = pending(folder, options)
    result = CaptionResult(kept=kept)
    if not todo:
        return result  # nothing to do: the model is not even loaded
    captioner = (load or load_captioner)(options.model)
    batches = [todo[i : i + options.batch] for i in range(0, len(todo), options.batch)]
    show = sys.stderr.isatty() if progress is None else progress
    if show:
        from tqdm import tqdm

        batches = tqdm(batches, desc="caption", unit="batch", file=sys.stderr)
    for paths in batches:
        _caption_batch(paths, captioner, options, result)
    return result


def _caption_batch(paths, captioner, options: CaptionOptions, result: CaptionResult) -> None:
    images, readable = [], []
    for path in paths:
        try:
            images.append(open_rgb(path))
            readable.append(path)
        except Exception as err:  # a file the trainer would skip too
            result.failed.append((path, f"{type(err).__name__}: {err}"))
    if not images:
        return
    texts = captioner.describe(images, options.prompt, options.max_new_tokens)
    for path, text in zip(readable, texts, strict=True):
        caption = clean_caption(text, options.remove, options.trigger)
        if not caption:
            result.failed.append((path, "the model returned no text"))
            continue
        write_text_atomic(caption_file(path, options.extension), caption + "\n")
        result.written.append(path)


def open_rgb(path: Path):
    """The image upright and in RGB, as a captioner should see it."""
    from PIL import Image, ImageOps

    from lorafile.runtime.dataprep.fix import to_rgb

    with Image.open(path) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


class Captioner:
    """A loaded model and processor, and how to prompt them."""

    def __init__(self, model, processor, style: str):
        self.model, self.processor, self.style = model, processor, style
        """`florence`, `chat` (a chat template) or `plain` (image in, text out)."""

    def describe(self, images: list, prompt: str | None, max_new_tokens: int) -> list[str]:
        """One caption per image."""
        import torch

        inputs = self._inputs(images, prompt)
        inputs = inputs.to(self.model.device)
        dtype = self.model.dtype
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        if self.style == "chat" and not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1] :]  # a decoder-only model echoes the prompt
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]

    def _inputs(self, images: list, prompt: str | None):
        n = len(images)
        if self.style == "florence":
            return self.processor(
                text=[prompt or FLORENCE_TASK] * n, images=images, return_tensors="pt"
            )
        if self.style == "chat":
            messages = [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": prompt or CHAT_PROMPT}],
                }
            ]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            return self.processor(text=[text] * n, images=images, return_tensors="pt", padding=True)
        text = [prompt] * n if prompt else None
        return self.processor(images=images, text=text, return_tensors="pt")


def load_captioner(name: str) -> Captioner:
    """Load a local folder or a named hub model; D833 when that fails."""
    import torch

    local = Path(name).expanduser()
    if not local.exists() and name.startswith(("/", ".", "~")):
        _fail(name, "the folder does not exist", "pass a model folder, or a hub name")
    source = str(local) if local.exists() else name
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    try:
        return _load(source, local.exists(), device, torch.bfloat16 if bf16 else torch.float32)
    except (OSError, ValueError, KeyError, ImportError) as err:
        _fail(name, first_line(err),
              "pass a folder saved by transformers' save_pretrained (model and processor), "
              "or a hub name of an image-to-text model")  # fmt: skip


def _load(source: str, local: bool, device: str, dtype) -> Captioner:
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(source, local_files_only=local)
    processor = AutoProcessor.from_pretrained(source, local_files_only=local)
    kwargs = dict(local_files_only=local, dtype=dtype)
    if config.model_type == "florence2":
        from transformers import Florence2ForConditionalGeneration

        model = Florence2ForConditionalGeneration.from_pretrained(source, **kwargs)
        return Captioner(model.to(device).eval(), processor, "florence")
    model = _auto_model(source, config, kwargs)
    style = "chat" if getattr(processor, "chat_template", None) else "plain"
    return Captioner(model.to(device).eval(), processor, style)


def _auto_model(source: str, config, kwargs: dict):
    """The model through the first Auto class that knows its config: image-text-to-text
    (LLaVA-style and, in recent transformers, BLIP), then vision-to-text (older releases)."""
    import transformers

    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            return auto.from_pretrained(source, **kwargs)
        except ValueError:  # "Unrecognized configuration class" for this Auto class
            continue
    raise ValueError(f"`{config.model_type}` is not an image-to-text model transformers can load")


def _fail(name: str, why: str, help: str = "") -> None:
    bag = DiagnosticBag(file=name)
    bag.error("D833", f"Cannot load the caption model `{name}`: {why}.", help)
    raise DiagnosticError(bag.items)
