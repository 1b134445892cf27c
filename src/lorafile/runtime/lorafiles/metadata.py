"""The training run's settings as kohya's `ss_*` / `modelspec.*` metadata keys.

Written into every adapter file the native trainer saves, spelled as sd-scripts'
train_network.py writes them (reference/kohya.md §5), so AUTOMATIC1111, ComfyUI and CivitAI
show how the adapter was trained.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def kohya_metadata(trainer: Any) -> dict:
    """The run's settings so far (step, epoch) as kohya metadata keys.

    `trainer` is the native `Trainer` (runtime/train/loop.py); it is not imported here, so the
    LoRA-file package does not depend on the training loop."""
    r, recipe, mem = trainer.r, trainer.recipe, trainer.plan["memory"]
    t, d = recipe.train, recipe.datasets[0]
    subject = [it for it in trainer.items if not it.is_reg]
    tags: dict[str, int] = {}
    for it in subject:
        for tag in (x.strip() for x in it.caption.split(",")):
            tags[tag] = tags.get(tag, 0) + 1
    return {
        "ss_output_name": r["output"]["name"],
        "ss_learning_rate": t.lr,
        "ss_unet_lr": r["unet_lr"],
        "ss_text_encoder_lr": r["text_encoder_lr"] if recipe.adapter.text_encoder else 0.0,
        "ss_num_train_images": len(subject) * d.repeats,
        "ss_num_reg_images": len(trainer.items) - len(subject),
        "ss_num_batches_per_epoch": r["batches_per_epoch"],
        "ss_num_epochs": math.ceil(r["epochs"] or 1),
        "ss_epoch": trainer.position[0],
        "ss_steps": trainer.step,
        "ss_max_train_steps": trainer.total,
        "ss_lr_warmup_steps": r["warmup_steps"],
        "ss_lr_scheduler": t.scheduler,
        "ss_optimizer": t.optimizer,
        "ss_network_dropout": recipe.adapter.dropout,
        "ss_gradient_checkpointing": mem["gradient_checkpointing"],
        "ss_gradient_accumulation_steps": t.accumulate,
        "ss_mixed_precision": t.precision,
        "ss_cache_latents": mem["cache_latents"],
        "ss_seed": trainer.seed,
        "ss_noise_offset": t.noise_offset,
        "ss_multires_noise_iterations": t.multires_noise_iterations,
        "ss_multires_noise_discount": t.multires_noise_discount,
        "ss_ip_noise_gamma": t.ip_noise_gamma,
        "ss_zero_terminal_snr": recipe.base.zero_terminal_snr,
        "ss_debiased_estimation": t.debiased_estimation,
        "ss_loss_type": t.loss,
        "ss_huber_schedule": t.huber_schedule,
        "ss_huber_c": t.huber_c,
        "ss_min_snr_gamma": t.min_snr_gamma,
        "ss_max_grad_norm": t.max_grad_norm,
        "ss_prior_loss_weight": trainer.reg_weights[0] if trainer.reg_weights else 1.0,
        "ss_clip_skip": recipe.base.clip_skip,
        "ss_caption_dropout_rate": d.caption_dropout,
        "ss_batch_size_per_device": t.batch,
        "ss_total_batch_size": r["effective_batch"],
        "ss_resolution": f"({d.resolution.width}, {d.resolution.height})",
        "ss_flip_aug": d.flip,
        "ss_shuffle_caption": d.shuffle_captions,
        "ss_keep_tokens": d.keep_tokens,
        "ss_enable_bucket": d.buckets.enabled,
        "ss_min_bucket_reso": d.buckets.min,
        "ss_max_bucket_reso": d.buckets.max,
        "ss_bucket_no_upscale": not d.buckets.upscale,
        "ss_bucket_info": {"buckets": trainer.plan["buckets"]},
        "ss_tag_frequency": {Path(d.path).name: tags},
        "ss_dataset_dirs": {Path(d.path).name: {"n_repeats": d.repeats, "img_count": len(subject)}},
        "modelspec.resolution": f"{d.resolution.width}x{d.resolution.height}",
        "modelspec.prediction_type": recipe.base.prediction,
    }
