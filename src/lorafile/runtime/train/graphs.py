"""The micro-batch step in static-buffer form, replayed as one CUDA graph per bucket shape.

A CUDA step launches thousands of small kernels; with a LoRA on SDXL the GPU waits for the
host (reference/cuda_graphs.md measured 5.2x at batch 1 on an H200 for the whole step as one
graph). Here each micro-batch's forward, loss and backward read their inputs from buffers
allocated once per input shape:

  outside the graph (host)      posterior mean/std, prompt embeds, pooled, time ids and prior
                                weights copied INTO the shape's buffers (`copy_`, never rebound);
                                the step's generator reseeded from (seed, epoch, batch index)
  inside the graph (device)     posterior sample, noise, timesteps (drawn on the device from
                                that generator), UNet forward, loss, backward accumulating into
                                the gradients, the loss written to a static scalar
  after the micro-batches       gradient clipping and the optimizer step, eagerly (any
                                optimizer, bitsandbytes' 8-bit included: its kernels take the
                                step count and lr as host scalars, which a graph would freeze)

Reseeding per micro-batch makes every random number a function of the position in the data
order, so a resumed run replays exactly without saving a generator state. On the CPU the
generator is a CPU generator seeded exactly as `diffusion.step_generator`, and the draws come
in the eager step's order: the static form trains bit-for-bit what the eager form trains (a
test checks it). On CUDA the draws are Philox numbers, deterministic but not the CPU's.

Anything that cannot run in this form (trained text encoders, color augmentation) runs the
eager step; a shape whose capture raises falls back to eager for the rest of the run. Both say
why once (T579), neither stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lorafile.compiler.diagnostics import error_summary

WARMUP_ITERATIONS = 3
"""Eager iterations before a capture, on a side stream: cuBLAS handles, cuDNN autotuning and
diffusers' lazy moves (the scheduler's alphas_cumprod) happen outside the graph."""


def ineligible(trainer) -> str | None:
    """Why this run's step cannot take the static-buffer form (None: it can)."""
    if trainer.te_params:
        return "the text encoders are trained, so their inputs cannot be fixed buffers"
    if any(d.color_aug for d in trainer.recipe.datasets):
        return "color augmentation draws its hue on the host every step"
    t = trainer.recipe.train
    if t.noise_offset_probability < 1.0 or t.multires_noise_iterations:
        return (
            "the noise offset probability and multi-resolution noise read random draws on the host"
        )
    return None


def capture_blocker(trainer) -> str | None:
    """Why the static step cannot be captured as a CUDA graph here (None: try to)."""
    import torch

    if trainer.device.type != "cuda":
        return "not on CUDA"  # the CPU runs the static form without capture, silently
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return f"torch {torch.__version__} cannot register the step's generator with a graph"
    return None


@dataclass
class Slot:
    """One input shape: its static buffers, the loss its graph writes, and the graph."""

    inputs: dict
    loss: object = None
    graph: object = None


@dataclass
class StaticStep:
    """Runs micro-batches in static-buffer form for a Trainer (see the module docstring)."""

    trainer: object
    capture: bool
    slots: dict = field(default_factory=dict)
    pool: object = None
    """The first graph's memory pool, shared by every later shape's graph."""

    def __post_init__(self) -> None:
        import torch

        self.generator = torch.Generator(self.trainer.device)
        self.params = self.trainer.unet_params + self.trainer.te_params

    def notice(self, line: str) -> None:
        """The one-time T579 line (rank 0 only: every rank falls back alike)."""
        if self.trainer.writes:
            print(line, flush=True)

    def run(self, epoch: int, index: int, batch) -> object:
        """Forward and backward of one micro-batch; returns its loss (a device scalar)."""
        from lorafile.runtime.train import diffusion

        inputs = step_inputs(self.trainer, epoch, index, batch)
        key = tuple((name, tuple(t.shape), t.dtype) for name, t in inputs.items())
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = Slot({n: t.clone() for n, t in inputs.items()})
        else:
            for name, value in inputs.items():
                slot.inputs[name].copy_(value, non_blocking=True)
        seed = diffusion.step_seed(self.trainer.seed, epoch, index)
        if self.capture and slot.graph is None:
            self._capture(slot, seed)
        self.generator.manual_seed(seed)
        if slot.graph is not None:
            slot.graph.replay()
            return slot.loss
        return forward_backward(self.trainer, slot.inputs, self.generator)

    def _capture(self, slot: Slot, seed: int) -> None:
        """Warm up, then record the slot's step; on any error fall back to eager (T579).

        Warm-up iterations really run forward and backward, so the gradients accumulated so
        far in this optimizer step are saved first and put back afterwards, and so is the
        global RNG state their adapter dropout draws from: a run that captures later (after a
        resume) then draws what an uninterrupted run draws."""
        import torch

        from lorafile.runtime.train import checkpoint as ckpt

        saved = [None if p.grad is None else p.grad.clone() for p in self.params]
        rng = ckpt.rng_state()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_ITERATIONS):
                    self.generator.manual_seed(seed)
                    forward_backward(self.trainer, slot.inputs, self.generator)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.generator)
            slot.loss = record(
                graph,
                self.pool,
                lambda: forward_backward(self.trainer, slot.inputs, self.generator),
            )
            self.pool = self.pool or graph.pool()
            slot.graph = graph
        except Exception as err:  # an op that cannot be captured: eager from now on
            self.capture = False
            shape = "x".join(str(n) for n in slot.inputs["mean"].shape)
            self.notice(
                f"info[T579]: the {shape} step runs eagerly: capturing it as a CUDA graph "
                f"raised {error_summary(err)}"
            )
        finally:
            _restore_grads(self.params, saved)
            ckpt.set_rng_state(rng)


def record(graph, pool, step):
    """Capture `step()` into `graph` (memory from `pool`, shared between shapes); returns its
    output tensor, which every replay overwrites. Nothing runs on the GPU while recording."""
    import torch

    with torch.cuda.graph(graph, pool=pool):
        return step()


def _restore_grads(params, saved) -> None:
    """Gradients exist (zeros where there were none) so a captured backward accumulates into
    them in place; their values are those from before the warm-up."""
    import torch

    for p, grad in zip(params, saved, strict=True):
        if grad is None:
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
        else:
            p.grad.copy_(grad)


def step_inputs(trainer, epoch: int, index: int, batch) -> dict:
    """What the host prepares for a micro-batch: device tensors, copied into the buffers."""
    import torch

    from lorafile.runtime.train.diffusion import to_device

    mean, std = trainer.posterior(batch)
    cond = trainer.conditioning(epoch, index, batch)
    items = [trainer.items[s.index] for s in batch]
    prior = [trainer.reg_weights[it.source] if it.is_reg else 1.0 for it in items]
    return {
        "mean": mean,
        "std": std,
        "embeds": cond["embeds"],
        "pooled": cond["pooled"],
        "time_ids": cond["time_ids"],
        # x * 1.0 is exact: the eager step's "no regularization image" case gives the same loss
        "prior": to_device(torch.tensor(prior), trainer.device),
    }


def forward_backward(trainer, inputs: dict, generator):
    """The capturable part: sample, noise, UNet, loss, backward. No host sync, no host value
    that changes per step (the generator's seed is set before, outside)."""
    import torch
    from accelerate.utils import AutocastKwargs

    from lorafile.runtime.train import diffusion

    t = trainer.recipe.train
    # Autocast's cast cache would belong to the capture and break on replay.
    with trainer.accelerator.autocast(autocast_handler=AutocastKwargs(cache_enabled=False)):
        eps = torch.randn(inputs["mean"].shape, generator=generator, device=generator.device)
        latents = inputs["mean"] + inputs["std"] * eps
        cond = {k: inputs[k] for k in ("embeds", "pooled", "time_ids")}
        per_sample, timesteps = diffusion.denoising_loss(
            trainer.models.unet,
            trainer.noise_scheduler,
            latents,
            cond,
            generator,
            channels_last=getattr(trainer, "channels_last", False),
            dtype=getattr(trainer, "dtype", None),
            options=diffusion.StepOptions.from_recipe(trainer.recipe),
        )
    prediction = trainer.recipe.base.prediction
    if t.min_snr_gamma is not None:
        per_sample = per_sample * diffusion.min_snr_weights(
            trainer.noise_scheduler, timesteps, t.min_snr_gamma, prediction
        )
    if t.debiased_estimation:  # after min-SNR, as the eager step (and kohya) apply both
        per_sample = per_sample * diffusion.debiased_weights(
            trainer.noise_scheduler, timesteps, prediction
        )
    loss = (per_sample * inputs["prior"]).mean()
    trainer.accelerator.backward(loss / trainer.accumulate)
    return loss.detach().float()
