"""Render the test grid: one base model, one LoRA at a time, its strength switched per column.

Only one copy of the UNet ever exists. A LoRA file is attached as a peft adapter
(`export.load_adapter`, the loader `lorafile train` and `inspect` use); a strength s multiplies
each adapted layer's scale (alpha / rank) by s, as ComfyUI's `strength_model` and A1111's
weight do, on the UNet and on the text encoders alike. Strength 0 switches the adapter layers
off (peft `enable_adapters(False)`): each layer then runs its base layer alone, so the output
is the base model's, bit for bit. The next checkpoint replaces the adapter (deleted from every
layer, then the new file attached).

Images come from the trainer's sampler code (`sampling.preview_pipeline`, `sampling.decode`) in
a diffusers SDXL pipeline over the loaded modules; each prompt has its own CPU generator seeded
with its fixed seed, so a row starts from the same noise for every checkpoint and strength
(also in a batch, where each image draws from its own generator).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

from lorafile.runtime.train.sampling import decode, preview_pipeline

ADAPTER = "lorafile_eval"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class RenderSettings:
    sampler: str = "euler_a"
    steps: int = 28
    cfg: float = 7.0
    size: tuple[int, int] = (1024, 1024)
    negative: str = ""
    batch: int = 1
    """Prompts per pipeline call (a GPU renders several at once; 1 on a CPU)."""
    schedule: dict = field(default_factory=dict)
    """The run's schedule settings (v-prediction, zero-terminal-SNR), as its samples use them."""
    guidance_rescale: float = 0.0


def adapter_layers(models, name: str = ADAPTER) -> list:
    """Every peft layer of the UNet and text encoders that holds adapter `name`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for component in COMPONENTS:
        model = getattr(models, component, None)
        if model is None:
            continue
        for module in model.modules():
            if isinstance(module, BaseTunerLayer) and name in module.scaling:
                layers.append(module)
    return layers


class StrengthSwitch:
    """The attached LoRA's layers and their trained scales; `set(s)` sets the strength."""

    def __init__(self, models, name: str = ADAPTER):
        self.models, self.name = models, name
        self.layers = adapter_layers(models, name)
        self.scales = [layer.scaling[name] for layer in self.layers]
        self.strength = 1.0

    def set(self, strength: float) -> None:
        for layer, scale in zip(self.layers, self.scales, strict=True):
            if strength == 0:
                layer.enable_adapters(False)  # the base layer alone: exact base output
            else:
                layer.enable_adapters(True)
                layer.scaling[self.name] = scale * strength
        self.strength = strength

    def remove(self) -> None:
        """Delete the adapter from every layer (and from the models' peft configs)."""
        self.set(1.0)
        for layer in self.layers:
            layer.delete_adapter(self.name)
        for component in COMPONENTS:
            config = getattr(getattr(self.models, component, None), "peft_config", None)
            if isinstance(config, dict):
                config.pop(self.name, None)
        self.layers, self.scales = [], []


class Renderer:
    """A pipeline over one loaded base model; `use(lora)` swaps the LoRA it renders with."""

    def __init__(self, models, settings: RenderSettings, device, autocast=None):
        self.models, self.settings, self.device = models, settings, device
        self.autocast = autocast or contextlib.nullcontext
        self.pipe = preview_pipeline(models, settings.sampler, settings.schedule)
        self.switch: StrengthSwitch | None = None

    def use(self, lora) -> None:
        """Attach a LoraFile (or path) in place of the current one; None: the base alone."""
        from lorafile.runtime.lorafiles import export

        if self.switch is not None:
            self.switch.remove()
            self.switch = None
        if lora is not None:
            with warnings.catch_warnings():
                # peft warns that a model with a peft_config gets another adapter: the earlier
                # one was deleted from every layer above, so only one is ever attached.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                export.load_adapter(lora, self.models, adapter_name=ADAPTER)
            for component in COMPONENTS:  # the models were in eval mode; new layers follow
                model = getattr(self.models, component, None)
                if model is not None:
                    model.eval()
            self.switch = StrengthSwitch(self.models)

    def set_strength(self, strength: float) -> None:
        if self.switch is not None:
            self.switch.set(strength)

    def render(self, prompts) -> list:
        """PIL images of `prompts` (evaluate.prompts.Prompt) at the current strength."""
        images = []
        step = max(self.settings.batch, 1)
        for start in range(0, len(prompts), step):
            images += self._render_batch(prompts[start : start + step])
        return images

    def _render_batch(self, prompts) -> list:
        import torch

        s = self.settings
        width, height = s.size
        # A generator per prompt: the row's noise does not depend on the batch it falls in.
        generators = [torch.Generator("cpu").manual_seed(p.seed) for p in prompts]
        with torch.no_grad(), self.autocast():
            latents = self.pipe(
                [p.text for p in prompts],
                negative_prompt=[s.negative] * len(prompts) if s.negative else None,
                num_inference_steps=s.steps,
                guidance_scale=s.cfg,
                guidance_rescale=s.guidance_rescale,
                width=width,
                height=height,
                generator=generators,
                output_type="latent",
            ).images
        processor = self.pipe.image_processor
        return [decode(self.models.vae, processor, latents[i : i + 1]) for i in range(len(prompts))]
