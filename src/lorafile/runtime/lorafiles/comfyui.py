"""A ComfyUI workflow, in API format, that renders with the trained LoRA.

API format is what ComfyUI's `/prompt` endpoint takes and what "Save (API Format)" writes (its
loader opens it too): `{node_id: {"class_type", "inputs", "_meta": {"title"}}}`, where an input
is either a widget value or a link `[source_node_id, output_index]`, output_index counting the
source node's RETURN_TYPES. Node and input names are ComfyUI's (`nodes.py`; the test checks them
against tests/fixtures/comfyui_nodes.json, written from that source):

    1 CheckpointLoaderSimple -> (MODEL, CLIP, VAE)
    2 LoraLoader(model=1.0, clip=1.1) -> (MODEL, CLIP)
    3 CLIPTextEncode(positive, clip=2.1), 4 CLIPTextEncode(negative, clip=2.1) -> CONDITIONING
    5 EmptyLatentImage(training resolution) -> LATENT
    6 KSampler(model=2.0, positive=3.0, negative=4.0, latent_image=5.0) -> LATENT
    7 VAEDecode(samples=6.0, vae=1.2) -> IMAGE
    8 SaveImage(images=7.0)

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

# Recipe sampler (kohya spelling) -> ComfyUI (sampler_name, scheduler) (comfy/samplers.py).
SAMPLERS = {
    "euler_a": ("euler_ancestral", "normal"),
    "euler": ("euler", "normal"),
    "ddim": ("ddim", "ddim_uniform"),
    "ddpm": ("ddpm", "normal"),
    "pndm": ("euler", "normal"),  # ComfyUI has no PNDM; Euler is the closest plain ODE step
    "lms": ("lms", "normal"),
    "heun": ("heun", "normal"),
    "dpm_2": ("dpm_2", "normal"),
    "dpm_2_a": ("dpm_2_ancestral", "normal"),
    "dpmpp_2m": ("dpmpp_2m", "normal"),
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"),
    "dpmpp_sde": ("dpmpp_sde", "normal"),
    "unipc": ("uni_pc", "normal"),
}
DEFAULT_NEGATIVE = "lowres, blurry, jpeg artifacts, watermark, text, deformed"


@dataclass
class WorkflowSettings:
    """What the workflow renders: files by name as ComfyUI's model folders list them."""

    ckpt_name: str
    lora_name: str
    positive: str
    negative: str = DEFAULT_NEGATIVE
    width: int = 1024
    height: int = 1024
    strength: float = 1.0
    steps: int = 30
    cfg: float = 7.0
    seed: int = 0
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    prefix: str = "lorafile"


def _node(class_type: str, title: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def workflow(s: WorkflowSettings) -> dict:
    """The API-format workflow for `s` (see the module docstring for the graph)."""
    return {
        "1": _node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=s.ckpt_name),
        "2": _node(
            "LoraLoader",
            "Load LoRA",
            model=["1", 0],
            clip=["1", 1],
            lora_name=s.lora_name,
            strength_model=s.strength,
            strength_clip=s.strength,
        ),
        "3": _node("CLIPTextEncode", "Positive (with the trigger)", text=s.positive, clip=["2", 1]),
        "4": _node("CLIPTextEncode", "Negative", text=s.negative, clip=["2", 1]),
        "5": _node(
            "EmptyLatentImage", "Training resolution", width=s.width, height=s.height, batch_size=1
        ),
        "6": _node(
            "KSampler",
            "KSampler",
            model=["2", 0],
            seed=s.seed,
            steps=s.steps,
            cfg=s.cfg,
            sampler_name=s.sampler,
            scheduler=s.scheduler,
            positive=["3", 0],
            negative=["4", 0],
            latent_image=["5", 0],
            denoise=1.0,
        ),
        "7": _node("VAEDecode", "VAE Decode", samples=["6", 0], vae=["1", 2]),
        "8": _node("SaveImage", "Save Image", images=["7", 0], filename_prefix=s.prefix),
    }


def strong_prompt(trigger: str | None, prompts: list[str]) -> str:
    """The first sample prompt that carries the trigger, else the trigger with a plain subject."""
    for prompt in prompts:
        if trigger and trigger in prompt:
            return prompt
    if trigger:
        return f"{trigger}, a detailed picture, high quality"
    return prompts[0] if prompts else "a detailed picture, high quality"


def settings_from_plan(plan: dict, lora_name: str, strength: float = 1.0) -> WorkflowSettings:
    """Settings from a native plan.json (its "resolved" part, or a flat dict of the same keys): the base's file name, the training resolution, the
    sample block's prompts, negative, sampler, steps, cfg and seed (when it has one)."""
    recipe, settings = plan.get("recipe", {}), plan.get("resolved") or plan
    dataset = (recipe.get("datasets") or [{}])[0]
    resolution = dataset.get("resolution") or {"width": 1024, "height": 1024}
    sample = settings.get("sample") or {}
    sampler, scheduler = SAMPLERS.get(sample.get("sampler", ""), ("dpmpp_2m", "karras"))
    base = str(
        settings.get("base") or recipe.get("base", {}).get("path", "sd_xl_base_1.0.safetensors")
    )
    ckpt = base.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if not ckpt.endswith((".safetensors", ".ckpt")):
        ckpt += ".safetensors"  # a diffusers folder: ComfyUI loads the single-file export
    return WorkflowSettings(
        ckpt_name=ckpt,
        lora_name=lora_name,
        positive=strong_prompt(recipe.get("trigger"), list(sample.get("prompts", []))),
        negative=sample.get("negative") or DEFAULT_NEGATIVE,
        width=int(resolution["width"]),
        height=int(resolution["height"]),
        strength=strength,
        steps=int(sample.get("steps", 30)),
        cfg=float(sample.get("cfg", 7.0)),
        seed=int(sample.get("seed", settings.get("seed") or 0)),
        sampler=sampler,
        scheduler=scheduler,
        prefix=lora_name.rsplit(".", 1)[0],
    )
