"""Latent and text-encoder caches, and the encoders that fill them.

A cache entry is a safetensors file named by the sha256 of everything that decides its content:
the image's content hash, its bucket and crop, the flip, a fingerprint of the VAE (or, for
text, the caption and a fingerprint of both text encoders and the clip skip). A changed image,
caption, resolution or model therefore looks up a different name: a stale entry is never used,
and exactly the affected entries are recomputed. Writes are atomic (files.atomic_path).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from lorafile.runtime.train.data import ImageItem, load_pixels

CACHE_VERSION = 1
"""Bump when the encoding changes (resize filter, scaling): every old entry becomes stale."""


def model_fingerprint(*modules) -> str:
    """A cheap identity for frozen weights: config plus a strided sample of every parameter.

    Hashing every byte of the SDXL text encoders takes seconds; a sample with a prime stride
    still changes with any different checkpoint, which is what the cache key needs.
    """
    import torch

    digest = hashlib.sha256()
    for module in modules:
        config = getattr(module, "config", None)
        digest.update(repr(config.to_dict() if hasattr(config, "to_dict") else config).encode())
        for name, param in module.named_parameters():
            sample = param.detach().flatten()[::997].to("cpu", torch.float32)
            digest.update(name.encode() + sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def entry_key(**parts) -> str:
    payload = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class TensorCache:
    """Entries by key, in memory or as `<folder>/<key>.safetensors`; counts hits and misses.

    A disk cache keeps nothing in RAM (a large dataset's latents would not fit); reading one
    small safetensors file per image per step costs far less than a VAE encode.
    """

    folder: Path | None = None
    memory: dict = field(default_factory=dict)
    pin: bool = False
    """Keep in-memory entries in pinned (page-locked) host memory: set when training on CUDA,
    so each step's copy to the GPU is asynchronous (diffusion.to_device)."""
    hits: int = 0
    misses: int = 0
    written: list[str] = field(default_factory=list)

    def get(self, key: str):
        if key in self.memory:
            return self.memory[key]
        if self.folder is not None and (self.folder / f"{key}.safetensors").is_file():
            from safetensors.torch import load_file

            return load_file(self.folder / f"{key}.safetensors")  # not kept: RAM stays flat
        return None

    def put(self, key: str, tensors: dict) -> None:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        self.written.append(key)
        if self.folder is None:
            if self.pin:
                tensors = {k: v.pin_memory() for k, v in tensors.items()}
            self.memory[key] = tensors
        else:
            from safetensors.torch import save_file

            from lorafile.files import atomic_path

            with atomic_path(self.folder / f"{key}.safetensors") as tmp:
                save_file(tensors, str(tmp))  # atomic: no half-written entry, ever

    def lookup_or_compute(self, key: str, compute) -> dict:
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return entry
        self.misses += 1
        entry = compute()
        self.put(key, entry)
        return entry


# ---------------------------------------------------------------------------------------------
# Encoders


def encode_latents(vae, pixels):
    """VAE posterior of a (B, 3, H, W) batch in [-1, 1], scaled like the UNet expects.

    Returns (mean, std) so the trainer can draw a fresh, seeded sample every step (what the
    diffusers scripts do without a cache) instead of freezing one sample forever.
    """
    import torch

    from lorafile.runtime.train.diffusion import to_device

    with torch.no_grad():
        dist = vae.encode(to_device(pixels, vae.device).to(vae.dtype)).latent_dist
    scale = vae.config.scaling_factor
    return dist.mean.float() * scale, dist.std.float() * scale


def encode_prompts(tokenizers, text_encoders, captions: list[str], clip_skip: int | None = None):
    """SDXL conditioning: penultimate hidden states of both encoders concatenated, and the
    pooled (projected) output of the second, as in diffusers' `encode_prompt`.

    `clip_skip` counts layers from the end like kohya (SDXL's default is the penultimate = 2);
    grads flow when the encoders carry trained LoRA, so no `no_grad` here.
    """
    import torch

    from lorafile.runtime.train.diffusion import to_device

    layer = -(clip_skip or 2)
    states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        ids = to_device(ids, encoder.device)  # pinned + non_blocking on CUDA: no host wait
        out = encoder(ids, output_hidden_states=True, return_dict=False)
        states.append(out[-1][layer])
        pooled = out[0]  # text_embeds of CLIPTextModelWithProjection (the second encoder)
    return torch.cat(states, dim=-1), pooled


# ---------------------------------------------------------------------------------------------
# Filling the caches


def latent_key(item: ImageItem, flip: bool, vae_id: str) -> str:
    return entry_key(image=item.sha256, bucket=item.bucket, crop=item.crop, flip=flip, vae=vae_id)


def text_key(caption: str, te_id: str, clip_skip: int | None) -> str:
    return entry_key(caption=caption, te=te_id, clip_skip=clip_skip)


def fill_latents(
    cache: TensorCache, items: list[ImageItem], needed, vae, vae_id: str, progress=None
) -> None:
    """Encode every (item index, flip) in `needed` that the cache does not hold yet."""
    for index, flip in sorted(needed):
        item = items[index]

        def compute(item=item, flip=flip):
            pixels, _ = load_pixels(item, flip)
            mean, std = encode_latents(vae, pixels[None])
            return {"mean": mean[0], "std": std[0]}

        cache.lookup_or_compute(latent_key(item, flip, vae_id), compute)
        if progress:
            progress()


def fill_text(cache: TensorCache, captions, tokenizers, encoders, te_id: str, clip_skip) -> None:
    """Encode every caption in `captions` that the cache does not hold yet (one at a time:
    the cache is filled once, and a batch-of-one keeps the peak small)."""
    import torch

    for caption in sorted(set(captions)):

        def compute(caption=caption):
            with torch.no_grad():
                embeds, pooled = encode_prompts(tokenizers, encoders, [caption], clip_skip)
            return {"embeds": embeds[0].float(), "pooled": pooled[0].float()}

        cache.lookup_or_compute(text_key(caption, te_id, clip_skip), compute)


def fill_once(cache: TensorCache, fill, accelerator) -> None:
    """Fill a cache once for all processes of a run instead of once per process.

    One process: `fill()`. Several (DDP): a disk cache is filled by the first process of each
    machine while the others wait at a barrier, then read the files; an in-memory cache is
    filled by rank 0 and its entries are sent to the other ranks (torch.distributed
    broadcast_object_list), which re-pin them for the GPU copy.
    """
    if accelerator is None or accelerator.num_processes == 1:
        fill()
        return
    if cache.folder is not None:
        if accelerator.is_local_main_process:
            fill()
        accelerator.wait_for_everyone()  # the files exist before any rank reads them
        return
    import torch.distributed as dist

    if accelerator.is_main_process:
        fill()
    box = [cache.memory if accelerator.is_main_process else None]
    dist.broadcast_object_list(box, src=0)
    if not accelerator.is_main_process:
        cache.memory = {
            key: {k: v.pin_memory() if cache.pin else v for k, v in entry.items()}
            for key, entry in box[0].items()
        }
