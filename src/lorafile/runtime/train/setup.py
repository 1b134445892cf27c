"""Phase 1 of the native trainer, before the first step: load the models, list and bucket the
data, fill the latent/text caches, attach the adapters, apply the speed measures and build the
optimizer. `Trainer` (loop.py) inherits these; `Trainer.setup()` calls them in that order and
the loop itself lives in loop.py."""

from __future__ import annotations

from pathlib import Path

from lorafile.compiler.diagnostics import DiagnosticBag, fail
from lorafile.runtime.train import data
from lorafile.runtime.train.plan import scan_recipe


class TrainerSetup:
    """The setup methods of `Trainer`; they read and set the trainer's own attributes."""

    def _load_models(self) -> None:
        import torch

        from lorafile.runtime.models.hub import local_model
        from lorafile.runtime.models.sdxl import load_sdxl

        fp16 = self.plan["memory"]["mixed_precision"] == "fp16"
        dtypes = {
            "fp32": torch.float32,
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
            # Loaded in the compute dtype; `_attach_adapters` stores the frozen layers as fp8.
            "fp8": torch.float16 if fp16 else torch.bfloat16,
        }
        self.dtype = dtypes[self.plan["memory"]["base_precision"]]
        """The dtype the UNet computes in (its inputs are cast to it); not `unet.dtype`, which
        reads float8 once the base is stored in fp8 (runtime/train/fp8.py)."""
        variant, pickle = self.recipe.base.variant, self.options.allow_pickle
        where = Path(self.plan.get("base_dir") or ".")
        base = local_model(self.r["base"], where, variant, announce=not self.options.quiet)
        m = load_sdxl(base, allow_pickle=pickle, variant=variant)
        if self.r.get("vae"):
            vae = local_model(self.r["vae"], where, variant, announce=not self.options.quiet)
            m.vae = load_sdxl(vae, allow_pickle=pickle, parts=("vae",), variant=variant).vae
        # The VAE stays fp32 (diffusers' scripts: SDXL's VAE overflows in fp16).
        for module, dtype in (
            (m.vae, torch.float32),
            (m.unet, self.dtype),
            (m.text_encoder, self.dtype),
            (m.text_encoder_2, self.dtype),
        ):
            if module.dtype != dtype:  # cast only when needed: diffusers warns on every cast
                module.to(dtype)  # on the host first: an fp32 copy never reaches the GPU
            module.to(self.device)
        self.models = m
        from lorafile.runtime.train import diffusion

        base = self.recipe.base
        self.noise_scheduler = diffusion.training_scheduler(
            m.scheduler.config, base.prediction, base.zero_terminal_snr
        )
        if self.r["sample"]:  # fail now, not at the first sample after an hour of training
            from lorafile.runtime.train.sampling import make_scheduler

            make_scheduler(self.r["sample"]["sampler"], m.scheduler.config)

    def _load_data(self) -> None:
        bag = DiagnosticBag()
        base_dir = Path(self.plan.get("base_dir") or ".")
        self.items, summaries, _ = scan_recipe(self.recipe, base_dir, bag)
        for warning in bag.items:
            if not warning.is_error:
                print(f"warning[{warning.code}]: {warning.message}", flush=True)
        bag.raise_if_errors()  # e.g. T568: a caption file changed since the plan was built
        for summary in summaries["datasets"]:
            problem = data.check_counts(summary["images"], len(summary["skipped"]), summary["path"])
            if problem:
                help = "fix or replace the unreadable images, or check the dataset path"
                raise fail("T574", problem, help)
        regs = self.recipe.regularization
        self.repeats = [d.repeats for d in self.recipe.datasets]
        self.flips = [d.flip for d in self.recipe.datasets]
        self.reg_ratio = regs[0].ratio if regs else 0.0
        self.reg_weights = [r.weight for r in regs]
        """Prior-loss weight per regularization folder (`weight` in the recipe)."""

    def _fill_caches(self) -> None:
        from lorafile.runtime.train import cache

        mem, m = self.plan["memory"], self.models
        folder = self.out / "cache" if mem["cache_location"] == "disk" else None
        pin = self.device.type == "cuda"  # pinned entries: asynchronous copies to the GPU
        self.latent_cache = cache.TensorCache(folder / "latents" if folder else None, pin=pin)
        self.text_cache = cache.TensorCache(folder / "text" if folder else None, pin=pin)
        self.vae_id = cache.model_fingerprint(m.vae)
        self.te_id = cache.model_fingerprint(m.text_encoder, m.text_encoder_2)
        self.tokenizers = (m.tokenizer, m.tokenizer_2)
        if mem["cache_latents"]:
            needed = {
                (i, f)
                for i, it in enumerate(self.items)
                for f in {False, self.flips[it.source] and not it.is_reg}
            }
            cache.fill_once(
                self.latent_cache,
                lambda: cache.fill_latents(
                    self.latent_cache, self.items, needed, m.vae, self.vae_id
                ),
                self.accelerator,
            )
            self._offload(m.vae)
        if mem["cache_text"]:
            captions = {it.caption for it in self.items} | {""}  # "" for caption dropout
            fill = lambda: cache.fill_text(  # noqa: E731
                self.text_cache,
                captions,
                self.tokenizers,
                (m.text_encoder, m.text_encoder_2),
                self.te_id,
                self.recipe.base.clip_skip,
            )
            cache.fill_once(self.text_cache, fill, self.accelerator)
            self._offload(m.text_encoder, m.text_encoder_2)

    def _offload(self, *modules) -> None:
        """Free frozen encoders from the GPU once cached; they come back only for samples."""
        import torch

        for module in modules:
            module.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # frees the encoders' blocks for the UNet's activations

    def _attach_adapters(self) -> None:
        from lorafile.runtime.train.adapters import attach

        m, adapter = self.models, self.r["adapter"]
        self.unet_params = attach(m.unet, adapter, unet=True)
        self.te_params = []
        for encoder in (m.text_encoder, m.text_encoder_2):
            if adapter["text_encoder"]:
                self.te_params += attach(encoder, adapter, unet=False)
                encoder.train()
            else:  # frozen: no backward through them, and fp8 storage converts them
                encoder.requires_grad_(False)
        if self.plan["memory"]["gradient_checkpointing"]:
            m.unet.enable_gradient_checkpointing()  # recompute block activations in backward
            if self.te_params:
                for encoder in (m.text_encoder, m.text_encoder_2):
                    # transformers 5 renamed it; the old name still works with a warning
                    enable = getattr(
                        encoder,
                        "activation_checkpointing_enable",
                        encoder.gradient_checkpointing_enable,
                    )
                    enable()
        m.unet.train()
        if self.plan["memory"]["base_precision"] == "fp8":  # after attach: see runtime/train/fp8.py
            from lorafile.runtime.train.fp8 import store_base_fp8

            store_base_fp8(m, self.dtype, encoders=not self.plan["memory"]["cache_text"])

    def _speed_up(self) -> None:
        """CUDA only: TF32 matmuls, cuDNN autotuning, channels_last UNet; opt-in torch.compile.

        TF32 keeps fp32 range with a 10-bit mantissa: it changes only fp32 matmuls (fp32
        `precision no`, the fp32 adapter's own products), as every SDXL trainer allows it.
        cudnn.benchmark times the convolution algorithms once per input shape (per bucket).
        """
        import torch

        unet = self.models.unet
        self.channels_last = self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
            unet.to(memory_format=torch.channels_last)  # NHWC convolutions on tensor cores
        self.cuda_graphs = False
        if self.options.compile:
            self._compile(unet)

    def _compile(self, unet) -> None:
        """`--compile`: the repeated blocks or the whole UNet, when this machine can compile
        for the device (else T585, and the run goes on uncompiled)."""
        from lorafile.runtime.train.diffusion import compile_blocker, compile_unet

        why = compile_blocker(self.device.type)
        if why:
            if self.writes:
                print(f"warning[T585]: --compile is off for this run: {why}.", flush=True)
            return
        mode = "default" if self.options.compile is True else self.options.compile
        self.compile_mode = mode
        buckets = len({i.bucket for i in self.items})
        cuda_graphs = compile_unet(unet, buckets, mode, self.options.compile_scope)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"

    def _make_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)  # a process may train more than once (tests, demo)
        precision = self.plan["memory"]["mixed_precision"]
        self.accelerator = Accelerator(mixed_precision=precision, cpu=self.device.type == "cpu")

    def _build_optimizer(self) -> None:
        from lorafile.runtime.train.optim import build_optimizer, build_scheduler

        groups = [{"params": self.unet_params, "lr": self.r["unet_lr"]}]
        if self.te_params:
            groups.append({"params": self.te_params, "lr": self.r["text_encoder_lr"]})
        optimizer = build_optimizer(
            self.recipe.train.optimizer, groups, dict(self.recipe.train.optimizer_args)
        )
        self.optimizer = self.accelerator.prepare_optimizer(optimizer, device_placement=False)
        self.lr_scheduler = build_scheduler(
            optimizer, self.recipe.train, self.total, self.r["warmup_steps"]
        )
