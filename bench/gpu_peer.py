"""The GPU bench's other step makers (bench/gpu_train.py imports them):

  peer       the step of diffusers' `train_text_to_image_lora_sdxl.py`, written the way the
             example does it: peft `add_adapter` on to_q/k/v/out.0 (the example's
             target_modules), LoRA parameters in fp32, the UNet in bf16 under bf16 autocast,
             noise and timesteps from the global RNG, `F.mse_loss`, backward, clip 1.0, the
             optimizer step. The same cached-style inputs as lorafile's cases.
  graphs     lorafile's static-buffer step (runtime/train/graphs.py, the class the trainer
             uses), captured as one CUDA graph per shape; clip and optimizer after the replay.
  (regional  bench/gpu_train.py compiles each repeated block with the trainer's own
             `diffusion.compile_unet(scope="blocks")`, alone and inside this graph.)

Each maker returns `step(i)`, a function running one optimizer step without a host sync.
"""

from __future__ import annotations

from types import SimpleNamespace

PEER_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
"""train_text_to_image_lora_sdxl.py: `LoraConfig(r=rank, lora_alpha=rank,
init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])`."""


def example_optimizer(name: str, params: list):
    """The example script's optimizer: bitsandbytes' AdamW8bit stepping tensor by tensor
    (`--use_8bit_adam`), or torch AdamW; its `--adam_weight_decay` default 1e-4. Not lorafile's
    `optim.build_optimizer`, whose 8-bit step runs over flat buffers."""
    import torch

    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-4, weight_decay=1e-4)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)


def peer_step(unet, case, device, latents, cond):
    """The example script's step on `unet` (frozen, bf16); returns (step, trainable params)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from lorafile.runtime.models import sdxl

    unet.requires_grad_(False)
    config = LoraConfig(r=case.rank, lora_alpha=case.rank, init_lora_weights="gaussian",
                        target_modules=PEER_TARGETS)  # fmt: skip
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # the example keeps the trainable LoRA weights in fp32
    if case.checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    opt = example_optimizer(case.optimizer, params)
    sched = DDPMScheduler.from_config(sdxl.sdxl_config("scheduler"))
    cuda = device.type == "cuda"

    def step(i: int):
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = sched.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            pred = unet(noisy, t, cond["embeds"],
                        added_cond_kwargs={"text_embeds": cond["pooled"],
                                           "time_ids": cond["time_ids"]}).sample  # fmt: skip
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        return loss

    return step, params, opt


def static_step(unet, params, opt, sched, latents, cond, device, channels_last: bool, capture):
    """lorafile's StaticStep on a stand-in trainer holding just what it reads; `capture`:
    record one CUDA graph per shape (False: the same buffers, eager)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from lorafile.runtime.train.graphs import StaticStep
    from lorafile.spec.models import Base, Train  # the recipe's defaults: a plain L2 step

    AcceleratorState._reset_state(True)
    precision = "bf16" if device.type == "cuda" else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    batch = [SimpleNamespace(index=k) for k in range(latents.shape[0])]
    zeros = torch.zeros_like(latents)
    trainer = SimpleNamespace(
        device=device, seed=0, writes=True, unet_params=params, te_params=[],
        recipe=SimpleNamespace(train=Train(steps=1), base=Base(path="unused"), datasets=[]),
        accelerator=accelerator, models=SimpleNamespace(unet=unet), noise_scheduler=sched,
        accumulate=1, channels_last=channels_last, dtype=unet.dtype,
        items=[SimpleNamespace(is_reg=False, source=0)] * len(batch), reg_weights=[],
        posterior=lambda b: (latents, zeros), conditioning=lambda e, i, b: cond,
    )  # fmt: skip
    static = StaticStep(trainer, capture=capture and device.type == "cuda")

    def step(i: int):
        loss = static.run(0, i, batch)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)  # the captured backward accumulates into them
        return loss

    step.static = static
    return step
