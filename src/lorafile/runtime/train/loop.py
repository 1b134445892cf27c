"""The native trainer: a plan (see runtime/train/plan.py) in, an SDXL adapter file out.

Features, with what each costs (reference/vram_perf.md §5):
  * LoRA / LoCon / LoHa through peft on the UNet, optionally both text encoders.
  * Latent cache (`cache latents`): no VAE encode per step and the VAE leaves the device;
    costs disk (about 16 KiB per 1024² image) and one encoding pass up front.
  * Text-encoder cache (`cache text`): the encoders leave the device (1.6 GiB in bf16); not
    possible with trained encoders or shuffled captions.
  * Gradient checkpointing: about 6 GiB less at 1024², roughly 1.2–1.8x slower steps.
    `auto` (the default) is chosen on the run's device (runtime/train/choices.py).
  * The step in static-buffer form, one CUDA graph per bucket shape on CUDA (`graphs on`, the
    default; runtime/train/graphs.py); the eager step with `graphs off`.
  * Mixed precision bf16/fp16 through accelerate (fp16 with a loss scaler); adapter weights
    and optimizer state stay fp32. Attention is PyTorch SDPA (diffusers' default processor).
  * 8-bit AdamW (bitsandbytes): 6 bytes less per trainable parameter than AdamW.
  * fp8 base (`base_precision fp8`, runtime/train/fp8.py): frozen Linear/Conv weights stored in fp8.

Guards: an output folder with an earlier run is not touched without `resume` or `force`
(T571), nor one another run holds (T578, runtime/train/run_state.py); a NaN/inf loss stops the run
naming the step and the last good checkpoint (T573); a handled failure marks run.json failed
with its diagnostic, a full disk or unwritable folder is T577/T576, and the trained state is
checkpointed before the final export so a failure there loses nothing (`_export_final`).
Ctrl-C or SIGTERM during the loop stops after the step in progress with a checkpoint of it
(runtime/train/interrupt.py: `TrainingInterrupted`, exit 130 / 143 from the CLI).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafile.compiler.diagnostics import DiagnosticError, fail
from lorafile.files import real_path, write_text_atomic
from lorafile.runtime.lorafiles.metadata import kohya_metadata
from lorafile.runtime.train import checkpoint as ckpt
from lorafile.runtime.train import choices, data, interrupt, run_state
from lorafile.runtime.train.defaults import DEFAULT_LOG_EVERY
from lorafile.runtime.train.ema import make_ema
from lorafile.runtime.train.interrupt import KILL_AT_STEP_ENV as KILL_AT_STEP_ENV  # re-exported
from lorafile.runtime.train.interrupt import SIGNAL_AT_STEP_ENV as SIGNAL_AT_STEP_ENV
from lorafile.runtime.train.interrupt import TrainingInterrupted
from lorafile.runtime.train.plan import recipe_of
from lorafile.runtime.train.run_state import RUN_ARTIFACTS as RUN_ARTIFACTS  # re-exported
from lorafile.runtime.train.run_state import RUN_FILE, prepare_output, resume_checkpoint
from lorafile.runtime.train.setup import TrainerSetup


@dataclass
class TrainOptions:
    out: Path | None = None
    """Output folder; default: the recipe's `output` path."""
    resume: bool | Path = False
    """True: the latest checkpoint in the output folder; a path: that checkpoint folder."""
    force: bool = False
    """Replace an earlier run's outputs in the folder (caches are kept: they are keyed)."""
    format: str | None = None
    """`kohya` or `diffusers`; default: the recipe's `save` layout."""
    allow_pickle: bool = False
    device: str | None = None
    quiet: bool = False
    log_every: int = DEFAULT_LOG_EVERY
    """Steps between host synchronisations: the loss, grad norm and NaN guard are read back
    from the GPU once per interval (and before every checkpoint and at the end)."""
    graphs: bool | None = None
    """`--graphs on|off`; None: the recipe's `train { graphs }`."""
    compile: bool | str = False
    """torch.compile (dynamic=False: one graph per bucket shape; the first step of each shape
    compiles). True or a `torch.compile` mode from `diffusion.COMPILE_MODES`; "reduce-overhead"
    also replays each shape as a CUDA graph."""
    compile_scope: str = "blocks"
    """What is compiled: `blocks` (each repeated transformer block) or `unet` (the whole UNet);
    `diffusion.COMPILE_SCOPES`."""
    sample_scorer: Callable[..., Any] | None = None
    """Scores each set of samples against the base model (TensorBoard `eval/*`): a factory
    `(log_dir, sample settings, trigger, training images) -> scorer` with
    `scorer.score(models, paths, step, device, autocast)`. The commands pass
    `runtime.evaluate.during.SampleScorer`; the loop never imports evaluate (which reads runs)."""


@dataclass
class TrainResult:
    out: Path
    adapter: Path
    steps: int
    seed: int
    last_loss: float
    seconds: float
    samples: list[Path] = field(default_factory=list)
    log_dir: Path | None = None


class Trainer(TrainerSetup):
    """One training run. `setup()` loads and prepares everything, `train()` runs the loop."""

    def __init__(self, plan: dict, options: TrainOptions | None = None):
        # A copy: the device-dependent choices (runtime/train/choices.py) are written into it.
        self.plan, self.options = copy.deepcopy(plan), options or TrainOptions()
        self.recipe = recipe_of(plan)
        self.r = plan["resolved"]
        self.out = real_path(self.options.out or self.r["output"]["path"])
        self.total, self.accumulate = self.r["steps"], self.recipe.train.accumulate
        self.step, self.position, self.last_loss = 0, (0, 0), math.nan
        self.samples: list[Path] = []
        self.saved_step: int | None = None
        """The step of the checkpoint this process saved last (a stop does not save it twice)."""
        self.stop = interrupt.StopRequest()
        """The signal flag, with handlers installed only while `train()` runs its loop."""
        self.run_file_written = False
        self.lock = run_state.FolderLock(self.out)
        """Held (rank 0) from `setup()` until `train()` ends: one run per output folder."""
        self.sample_scorer = None
        """Scores each sample against the base model's images (evaluate/during.py)."""
        self.static = None
        """The static-buffer step (runtime/train/graphs.py); None: the eager step."""
        self.compile_mode: str | None = None
        """The torch.compile mode in effect (`--compile`), None when nothing is compiled."""

    @contextlib.contextmanager
    def _recording_failures(self, release: bool):
        """A handled failure marks run.json failed with its diagnostic (a full disk or an
        unwritable folder becomes T577/T576 first); the lock is released on any exception,
        and on success too when `release`."""
        try:
            with run_state.writing("into the output folder", self.out, only_under=True):
                yield
        except Exception as err:  # a diagnostic, or a bug / CUDA error: run.json says so too
            failure = self._compile_failure(err)
            self._record_failure(failure or err)
            self.lock.release()
            if failure:
                raise failure from err
            raise
        except BaseException:  # a signal: the caller records `interrupted` or `aborted`
            self.lock.release()
            raise
        if release:
            self.lock.release()

    def _restore_optimizer(self, saved: dict, scheduler: dict) -> None:
        """The optimizer's and the lr scheduler's state from a checkpoint; those of a run whose
        8-bit optimizer bitsandbytes stepped per tensor (lorafile before the flat step,
        runtime/train/optim.py) are laid out flat first."""
        from lorafile.runtime.train import optim

        inner = self.optimizer.optimizer
        if hasattr(inner, "layout") and optim.is_per_tensor_state(saved):
            groups = len(saved["param_groups"])
            saved = optim.flat_state_from_per_tensor(saved, inner)
            scheduler = optim.flat_scheduler_state(scheduler, inner, groups)
        inner.load_state_dict(saved)
        self.lr_scheduler.load_state_dict(scheduler)

    def _compile_failure(self, err: Exception):
        """T586 when `--compile`'s compiler failed (at any bucket shape's first step)."""
        if self.compile_mode is None:  # nothing compiled, or the set-up failed before
            return None
        from lorafile.runtime.train.diffusion import compile_failure

        return compile_failure(err, self.step + 1, self.saved_step)

    def _record_failure(self, err: Exception) -> None:
        """run.json says `failed` with the diagnostic, when this run owns the folder (an
        earlier run's record is never touched); best effort: the disk may be full."""
        if not (self.run_file_written and self.writes):
            return
        with contextlib.suppress(Exception):
            self._write_run_file("failed", error=run_state.failure_record(err))

    # ---- setup ---------------------------------------------------------------------------

    def setup(self) -> Trainer:
        """Load and prepare everything; a failure is recorded in run.json (see `train`)."""
        with self._recording_failures(release=False):
            return self._setup()

    def _setup(self) -> Trainer:
        import torch

        # 1. Device and accelerator (several processes: this joins the process group).
        self.device = torch.device(
            self.options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self._make_accelerator()
        choices.choose_checkpointing(self)  # `checkpointing auto` on this device
        # Only rank 0 writes (checkpoints, samples, logs, run.json); the others wait at barriers.
        self.writes = self.accelerator.is_main_process
        # 2. Output folder guard, then the state to resume from (it holds the seed).
        state = self._prepare_output()
        torch.manual_seed(self.seed)  # peft's initial adapter weights draw from the global RNG
        # 3. Models, data, caches, adapters, speed settings, optimizer.
        self._load_models()
        self._load_data()
        with run_state.writing("the latent and text cache", self.out / "cache"):
            self._fill_caches()
        self._attach_adapters()
        self._speed_up()
        self._build_optimizer()
        self.ema = make_ema(self.r.get("ema"), self.unet_params + self.te_params)
        self.static = choices.choose_step_form(self)  # None: the eager step
        if state:
            self._restore(*state)
        if self.writes:
            self._print_startup()
        return self

    def _prepare_output(self) -> tuple | None:
        """Rank 0 guards (and with --force clears) the folder while the others wait; every
        rank then loads the checkpoint to resume from. Sets the seed; returns the state."""
        if self.writes:  # before anything is written: a second run into the folder stops here
            self.lock.acquire()
            ckpt.remove_temp_folders(self.out)  # left by a killed save; no other run writes here
        resume_from = prepare_output(self.out, self.options) if self.writes else None
        self.accelerator.wait_for_everyone()  # rank 0 has cleared (--force) or checked the folder
        if not self.writes:
            resume_from = resume_checkpoint(self.out, self.options)
        state = ckpt.load_checkpoint(resume_from) if resume_from else None
        self.seed = state[1]["seed"] if state else self.r["seed"]
        if self.seed is None:
            self.seed = secrets.randbelow(2**32)  # the recipe asked for a random seed: record it
        self._write_run_file("running", resume_from)
        if self.writes:  # what this run trained with, for `--resume`
            write_text_atomic(self.out / "plan.json", json.dumps(self.plan, indent=2) + "\n")
        return state

    def _print_startup(self) -> None:
        from lorafile.runtime.train.logging import startup_line

        subject = [it for it in self.items if not it.is_reg]
        buckets = len({i.bucket for i in self.items})
        line = startup_line(
            self.plan, len(subject), len(self.items) - len(subject), buckets, self.device
        )
        print(line, flush=True)

    def _write_run_file(self, status: str, resume_from: Path | None = None, **extra) -> None:
        if not self.writes:
            return
        info = {
            "status": status,
            "seed": self.seed,
            "steps": self.total,
            "step": self.step,
            **run_state.this_process(),  # a `running` record whose process is gone is stale
            **extra,
        }
        if resume_from:
            info["resumed_from"] = str(resume_from)
        write_text_atomic(self.out / RUN_FILE, json.dumps(info, indent=2) + "\n")
        self.run_file_written = True

    def abandon(self, reason: str) -> bool:
        """After a KeyboardInterrupt outside the graceful stop (in `setup()`, or a second
        signal): mark run.json "aborted" with the last checkpoint, if this process wrote a
        run.json. True when it did (a fresh run then needs --force to start over)."""
        if not self.run_file_written:
            return False
        last = ckpt.latest_checkpoint(self.out)
        self._write_run_file("aborted", reason=reason, checkpoint=str(last) if last else None)
        return True

    def _restore(self, adapter: dict, state: dict) -> None:
        from lorafile.runtime.train.adapters import load_adapter_state

        m = self.models
        for prefix, module in (
            ("unet.", m.unet),
            ("text_encoder.", m.text_encoder),
            ("text_encoder_2.", m.text_encoder_2),
        ):
            part = {k[len(prefix) :]: v for k, v in adapter.items() if k.startswith(prefix)}
            if part:
                load_adapter_state(module, part)
        self._restore_optimizer(state["optimizer"], state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.step, self.position = state["step"], tuple(state["position"])
        self.last_loss = state.get("loss", math.nan)
        ckpt.set_rng_state(state["rng"])
        print(f"lorafile: resumed at step {self.step} of {self.total}", flush=True)

    # ---- one step ----------------------------------------------------------------------------

    def batches(self, epoch: int, index: int):
        """The endless stream of (epoch, index, batch) from a position in the data order."""
        while True:
            order = data.epoch_batches(
                self.items,
                repeats=self.repeats,
                reg_ratio=self.reg_ratio,
                batch=self.recipe.train.batch,
                seed=self.seed,
                epoch=epoch,
                flip=self.flips,
            )
            for k in range(index, len(order)):
                yield epoch, k, order[k]
            epoch, index = epoch + 1, 0

    def conditioning(self, epoch: int, index: int, batch: list[data.Sample]) -> dict:
        """Prompt embeds, pooled embeds and time ids for a batch (cached or encoded now)."""
        import torch

        from lorafile.runtime.train import cache
        from lorafile.runtime.train.diffusion import to_device

        captions = [self._caption(epoch, index, k, s) for k, s in enumerate(batch)]
        m = self.models
        if self.plan["memory"]["cache_text"]:
            entries = [
                self.text_cache.get(cache.text_key(c, self.te_id, self.recipe.base.clip_skip))
                for c in captions
            ]
            # Pinned entries, copied without a host wait, stacked on the device.
            embeds = torch.stack([to_device(e["embeds"], self.device) for e in entries])
            pooled = torch.stack([to_device(e["pooled"], self.device) for e in entries])
        else:
            with torch.set_grad_enabled(bool(self.te_params)):  # grads only for trained encoders
                embeds, pooled = cache.encode_prompts(
                    self.tokenizers,
                    (m.text_encoder, m.text_encoder_2),
                    captions,
                    self.recipe.base.clip_skip,
                )
        time_ids = to_device(
            torch.tensor([data.time_ids(self.items[s.index]) for s in batch], dtype=torch.float32),
            self.device,
        )
        dtype = getattr(self, "dtype", None) or self.models.unet.dtype  # unet.dtype walks modules
        return {"embeds": embeds, "pooled": pooled, "time_ids": time_ids.to(dtype)}

    def _caption(self, epoch: int, index: int, k: int, sample: data.Sample) -> str:
        item = self.items[sample.index]
        if item.is_reg:
            return item.caption
        d = self.recipe.datasets[item.source]
        return data.caption_for_step(
            item.caption,
            shuffle=d.shuffle_captions,
            keep_tokens=d.keep_tokens,
            dropout=d.caption_dropout,
            seed=self.seed,
            epoch=epoch,
            position=index * 1024 + k,
        )

    def posterior(self, batch: list[data.Sample], generator=None):
        """Each image's VAE posterior (mean, std) on the device: cached, or encoded now.

        `generator` (a host generator) draws the hue of color-augmented images; cached and
        uncached entries move with `to_device` (asynchronous on CUDA from pinned memory).
        """
        import torch

        from lorafile.runtime.train import cache
        from lorafile.runtime.train.diffusion import to_device

        means, stds = [], []
        for s in batch:
            item = self.items[s.index]
            color = not item.is_reg and self.recipe.datasets[item.source].color_aug
            # .item() of a host generator's draw: no GPU involved, no device sync
            hue = (torch.rand((), generator=generator).item() - 0.5) * 0.06 if color else 0.0
            entry = (
                None
                if color
                else self.latent_cache.get(cache.latent_key(item, s.flip, self.vae_id))
            )
            if entry is None:  # not cached: encode this step (the VAE stays on the device)
                pixels, _ = data.load_pixels(item, s.flip, hue)
                mean, std = cache.encode_latents(self.models.vae, pixels[None])
                entry = {"mean": mean[0], "std": std[0]}
            means.append(to_device(entry["mean"], self.device))
            stds.append(to_device(entry["std"], self.device))
        return torch.stack(means), torch.stack(stds)

    def latents(self, batch: list[data.Sample], generator):
        """A fresh sample from each image's VAE posterior; its noise is drawn on the host from
        the step's generator (the same values on every device)."""
        import torch

        from lorafile.runtime.train.diffusion import to_device

        mean, std = self.posterior(batch, generator)
        eps = torch.randn(mean.shape, generator=generator, device=generator.device)
        return mean + std * to_device(eps, self.device)

    def loss_step(self, epoch: int, index: int, batch: list[data.Sample]):
        """The weighted denoising loss of one micro-batch (scalar tensor with grad)."""
        import torch

        from lorafile.runtime.train import diffusion

        generator = diffusion.step_generator(self.seed, epoch, index)
        if getattr(self, "cuda_graphs", False):
            # A new iteration: the graphs' previous outputs may be overwritten from here on.
            torch.compiler.cudagraph_mark_step_begin()
        with self.accelerator.autocast():
            latents = self.latents(batch, generator)
            cond = self.conditioning(epoch, index, batch)
            per_sample, timesteps = diffusion.denoising_loss(
                self.models.unet,
                self.noise_scheduler,
                latents,
                cond,
                generator,
                channels_last=getattr(self, "channels_last", False),
                dtype=getattr(self, "dtype", None),  # known: diffusers' unet.dtype is slow
                options=diffusion.StepOptions.from_recipe(self.recipe),
            )
        train, prediction = self.recipe.train, self.recipe.base.prediction
        if train.min_snr_gamma is not None:
            per_sample = per_sample * diffusion.min_snr_weights(
                self.noise_scheduler, timesteps, train.min_snr_gamma, prediction
            )
        if train.debiased_estimation:  # after min-SNR, as kohya applies both
            weights = diffusion.debiased_weights(self.noise_scheduler, timesteps, prediction)
            per_sample = per_sample * weights
        # Prior preservation: a regularization image's loss counts its folder's `weight` times.
        items = [self.items[s.index] for s in batch]
        if any(it.is_reg for it in items):
            prior = [self.reg_weights[it.source] if it.is_reg else 1.0 for it in items]
            per_sample = per_sample * diffusion.to_device(torch.tensor(prior), per_sample.device)
        return per_sample.mean()

    def micro_step(self, epoch: int, index: int, batch: list[data.Sample]):
        """Forward and backward of one micro-batch (static-buffer form when `graphs on` allows
        it, runtime/train/graphs.py); returns the detached loss on the device."""
        if self.static is not None:
            return self.static.run(epoch, index, batch)
        loss = self.loss_step(epoch, index, batch)
        self.accelerator.backward(loss / self.accumulate)
        return loss.detach().float()

    def micro_batches(self, stream):
        """The `accumulate` micro-batches of one optimizer step (launch.DistributedTrainer
        overrides this and `sync_gradients` to split a step across processes)."""
        for _ in range(self.accumulate):
            yield next(stream)

    def sync_gradients(self, params) -> None:
        """One process: nothing to do."""

    def reduce_guard(self, guard):
        """One process: the guard as it is (DistributedTrainer takes the earliest over ranks)."""
        return guard

    def rank_difference(self) -> float | None:
        """One process: nothing to compare (DistributedTrainer: largest adapter difference)."""
        return None

    def stop_signal(self, flush_point: bool) -> int:
        """The signal to stop on now, 0 for none. One process: the flag, after every step (a
        Python value: no device sync). DistributedTrainer: reduced over the ranks at flush
        points only, so every rank stops at the same step."""
        return self.stop.signum or 0

    # ---- the loop -------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Run from the current step to the end (see `_train`); a failure marks run.json
        `failed` with its diagnostic, and the output folder's lock is released at the end."""
        with self._recording_failures(release=True):
            return self._train()

    def _train(self) -> TrainResult:
        """Run from the current step to the end; returns where everything was written.

        The loop never waits for the GPU: the loss stays a device tensor, and the losses,
        grad norms and the NaN guard are read back once per `log_every` steps, before every
        checkpoint and at the end (`_flush`, the one host synchronisation).

        SIGINT/SIGTERM while it runs: the step in progress completes, a checkpoint of it is
        written and `TrainingInterrupted` is raised (see runtime/train/interrupt.py); the previous
        signal handlers are back when this returns or raises.
        """
        from lorafile.runtime.train.logging import RunLog, StepGuard

        log_dir = self._log_dir()
        quiet = self.options.quiet or not self.writes
        log = RunLog(log_dir, self.total, self.step, self.device, quiet=quiet)
        self.guard, self.pending = StepGuard(self.device), []
        every = max(self.options.log_every, 1)
        world = self.accelerator.num_processes
        self.stop = interrupt.StopRequest(interrupt.notice(world, every) if self.writes else None)
        stream, start = self.batches(*self.position), time.perf_counter()
        with self.stop:
            try:
                while self.step < self.total:
                    self._one_step(stream, log)
                    if self.step % every == 0:
                        self._flush(log)
                    self._maybe_save_and_sample(log)
                    interrupt.inject_faults(self.step)  # tests only (env variables)
                    signum = self.step < self.total and self.stop_signal(self.step % every == 0)
                    if signum:
                        self._stop(log, signum)
                self._flush(log)  # the final loss, and no NaN adapter is exported
            finally:
                log.close()
            return self._finish(time.perf_counter() - start, log_dir)

    def _log_dir(self) -> Path | None:
        """TensorBoard's folder (rank 0 only): the recipe's `log` path, or `logs` in the
        output folder actually used, so `-o` never mixes a run's events into another's."""
        if self.r["log"]["to"] != "tensorboard" or not self.writes:
            return None
        return Path(self.r["log"]["path"]) if self.recipe.log.path else self.out / "logs"

    def _stop(self, log, signum: int) -> None:
        """Stop on a signal after this step: NaN guard, checkpoint, run.json, then raise."""
        self._flush(log)  # T573 instead of a checkpoint when a loss was non-finite
        if self.writes and self.saved_step != self.step:  # `save every` may have just saved it
            self.save_checkpoint()
        self.accelerator.wait_for_everyone()  # the other ranks wait while rank 0 writes
        folder = ckpt.step_dir(self.out, self.step)
        name = interrupt.signal_name(signum)
        self._write_run_file("interrupted", signal=name, checkpoint=str(folder))
        raise TrainingInterrupted(signum, self.step, self.total, folder)

    def _one_step(self, stream, log) -> None:
        """Forward and backward over `accumulate` micro-batches, clip, step, schedule."""
        import torch

        params = self.unet_params + self.te_params
        loss_sum, images = torch.zeros((), device=self.device), 0
        for epoch, index, batch in self.micro_batches(stream):
            loss_sum += self.micro_step(epoch, index, batch)  # a device tensor: no sync
            images += len(batch)
            self.position = (epoch, index + 1)
        loss = loss_sum / self.accumulate
        self.guard.record(loss, self.step + 1)  # device-side: remembers the first bad step
        self.sync_gradients(params)  # several processes: average them (runtime/train/launch.py)
        max_norm = self.recipe.train.max_grad_norm
        grad_norm = self.accelerator.clip_grad_norm_(
            params, max_norm if max_norm > 0 else float("inf")
        )  # a device tensor; fp16 only: the loss scaler's step reads found_inf (a sync)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()  # fp32 lerp on the device: no sync
        self.lr_scheduler.step()
        # Eager: frees the gradient memory right away. Static form: the gradients stay where a
        # captured backward accumulates into them (zeroed in place; the numbers are the same).
        self.optimizer.zero_grad(set_to_none=self.static is None)
        self.step += 1
        lr = self.lr_scheduler.get_last_lr()[0]  # a Python float: no sync
        self.pending.append((self.step, loss, grad_norm, lr))
        log.advance(images)

    def _flush(self, log) -> None:
        """Read the pending steps' losses and grad norms back (ONE host sync), log them, and
        stop with T573 if a loss was non-finite, naming the first such step."""
        import torch

        if not self.pending:
            return
        rows, self.pending = self.pending, []
        as_tensor = lambda x: (  # noqa: E731
            x.detach().float().reshape(())
            if torch.is_tensor(x)
            else torch.full((), math.nan if x is None else float(x), device=self.device)
        )
        packed = torch.stack(
            [*self.reduce_guard(self.guard.state)]
            + [as_tensor(r[1]) for r in rows]
            + [as_tensor(r[2]) for r in rows]
        )
        values = packed.tolist()  # the host sync: once per log interval / checkpoint / end
        bad_step, bad_value, rest = values[0], values[1], values[2:]
        losses, norms = rest[: len(rows)], rest[len(rows) :]
        if math.isfinite(bad_step):
            log.close()
            raise self._nan_error(bad_value, int(bad_step))
        self.last_loss = losses[-1]
        log.report(
            [(r[0], loss, r[3], norm) for r, loss, norm in zip(rows, losses, norms, strict=True)]
        )

    def _maybe_save_and_sample(self, log) -> None:
        save_every, sample = self.r["save"]["every_steps"], self.r["sample"]
        save = save_every and self.step % save_every == 0 and self.step < self.total
        draw = (
            sample
            and sample["every_steps"]
            and self.step % sample["every_steps"] == 0
            and self.step < self.total
        )
        if not (save or draw):
            return
        self._flush(log)  # never save or sample a NaN adapter: check the guard first
        if save and self.writes:
            folder = self.save_checkpoint()
            log.write(f"lorafile: saved checkpoint {folder}")
        if draw and self.writes:
            with run_state.writing("the samples", self.out / "samples"):
                self.samples += self.sample()
        self.accelerator.wait_for_everyone()  # the other ranks wait while rank 0 writes

    def _nan_error(self, value: float, step: int | None = None) -> DiagnosticError:
        step = self.step + 1 if step is None else step
        last = ckpt.latest_checkpoint(self.out)
        return fail(
            "T573",
            f"The loss became {value} at step {step}; training stopped before a checkpoint or "
            f"adapter file was written with it. "
            f"Last good checkpoint: {last or 'none (no checkpoint was saved yet)'}.",
            "likely causes: a learning rate too high for the optimizer, fp16 overflow (use bf16), "
            "or a base model with broken (NaN) weights; lower lr or change precision, then "
            + ("resume with --resume" if last else "start again with --force"),
        )

    # ---- outputs ------------------------------------------------------------------------------

    def adapter_states(self) -> dict:
        """The adapter in fp32 with peft names, prefixed by the model part it belongs to."""
        from lorafile.runtime.train.adapters import adapter_state

        m, out = self.models, {}
        parts = [("unet.", m.unet)]
        if self.te_params:
            parts += [("text_encoder.", m.text_encoder), ("text_encoder_2.", m.text_encoder_2)]
        for prefix, module in parts:
            out.update({prefix + k: v.float() for k, v in adapter_state(module).items()})
        return out

    def export(self, path: Path) -> Path:
        """Write the adapter in the user's format (kohya by default) and save precision (and
        its moving average as `NAME-ema.safetensors` when the recipe keeps one)."""
        fmt = self.options.format or self.r["save"]["layout"]
        return ckpt.export_adapter(
            path, self.models, fmt, self.r["save"]["precision"], kohya_metadata(self), self.ema
        )

    def save_checkpoint(self, keep: int | bool | None = True) -> Path:
        """Write a checkpoint of this step; `keep`: how many to keep (True: the recipe's)."""
        state = {
            "step": self.step,
            "position": list(self.position),
            "seed": self.seed,
            "loss": self.last_loss,
            "optimizer": self.optimizer.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": ckpt.rng_state(),
        }
        name = f"{self.r['output']['name']}-step{self.step:06d}.safetensors"
        with run_state.writing("a checkpoint", ckpt.step_dir(self.out, self.step)):
            folder = ckpt.save_checkpoint(
                self.out,
                self.step,
                self.adapter_states(),
                state,
                lambda folder: self.export(folder / name),
                self.r["save"]["keep"] if keep is True else keep,
            )
        self.saved_step = self.step
        return folder

    def sample(self) -> list[Path]:
        """Sample the recipe's prompts with the current adapter into samples/step-NNNNNN/ (and
        score them, while the encoders are back on the device); the offloaded encoders leave
        again, and the run's random stream is not shifted."""
        from lorafile.runtime.train.sampling import sample_images

        m, mem = self.models, self.plan["memory"]
        rng = ckpt.rng_state()  # sampling must not shift the training run's random stream
        for module in (m.vae, m.text_encoder, m.text_encoder_2):
            module.to(self.device)  # bring back what caching offloaded (no-op on CPU)
        trained = (m.unet, m.text_encoder, m.text_encoder_2)
        modes = [module.training for module in trained]
        for module in trained:
            module.eval()
        folder = self.out / "samples" / f"step-{self.step:06d}"
        paths = sample_images(m, self.r["sample"], folder, self.device, self.accelerator.autocast)
        self._score_samples(paths)
        for module, mode in zip(trained, modes, strict=True):
            module.train(mode)
        if mem["cache_latents"]:
            self._offload(m.vae)
        if mem["cache_text"]:
            self._offload(m.text_encoder, m.text_encoder_2)
        ckpt.set_rng_state(rng)
        return paths

    def _score_samples(self, paths: list[Path]) -> None:
        """TensorBoard's eval/* scalars for these samples (runtime/evaluate/during.py); the
        first call also renders the base model's images of the sample prompts."""
        log_dir, factory = self._log_dir(), self.options.sample_scorer
        if log_dir is None or factory is None:
            return
        if self.sample_scorer is None:
            subject = [Path(it.path) for it in self.items if not it.is_reg]
            self.sample_scorer = factory(log_dir, self.r["sample"], self.recipe.trigger, subject)
        self.sample_scorer.score(
            self.models, paths, self.step, self.device, self.accelerator.autocast
        )

    def _finish(self, seconds: float, log_dir: Path | None) -> TrainResult:
        difference = self.rank_difference()  # several processes: do the adapters agree?
        adapter = self.out / f"{self.r['output']['name']}.safetensors"
        if self.writes:
            adapter = self._export_final(adapter)
            extra = {} if difference is None else {"ranks_max_difference": difference}
            self._write_run_file(
                "finished",
                adapter=str(adapter),
                loss=self.last_loss,
                seconds=round(seconds, 1),
                **extra,
            )
            print(f"lorafile: wrote {adapter}", flush=True)
        self.accelerator.wait_for_everyone()  # every rank returns once the adapter is written
        return TrainResult(
            self.out, adapter, self.step, self.seed, self.last_loss, seconds, self.samples, log_dir
        )

    def _export_final(self, adapter: Path) -> Path:
        """Samples and the adapter file, with the trained state kept in a checkpoint until
        both are written: a failure here (a full disk) loses no training, the run resumes
        from that checkpoint (`--resume`) and only writes the files. Written with no pruning
        (no older checkpoint is dropped for it) and removed once the adapter is written."""
        safety, unsaved = None, None
        if self.saved_step != self.step:
            try:
                safety = self.save_checkpoint(keep=None)
            except DiagnosticError as err:  # the smaller adapter file may still fit: try it
                unsaved = err
        last = ckpt.latest_checkpoint(self.out) if unsaved is None else None
        if last:
            then = (
                f"the trained state is saved in `{last}`: run the same command with --resume "
                "to write the adapter from it"
            )
        else:  # the checkpoint did not fit either: nothing to resume from
            then = "no checkpoint of the trained state fitted either: the run has to start over"
        if self.r["sample"] and not self.stop.requested:  # a signal: finish quickly
            with run_state.writing("the samples", self.out / "samples", then):
                self.samples += self.sample()
        with run_state.writing("the adapter file", adapter, then):
            adapter = self.export(adapter)
        if safety is not None:
            shutil.rmtree(safety, ignore_errors=True)
            with contextlib.suppress(OSError):  # a run without `save every` leaves no folder
                safety.parent.rmdir()
        if unsaved is not None:
            print(f"lorafile: warning: no checkpoint of the last step: {unsaved}", flush=True)
        return adapter


def train(plan: dict, options: TrainOptions | None = None) -> TrainResult:
    """Train the adapter a plan describes (see the module docstring for the guards)."""
    return Trainer(plan, options).setup().train()
