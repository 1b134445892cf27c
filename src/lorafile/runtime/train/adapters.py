"""Attach the recipe's adapter (LoRA, LoCon, LoHa, LoKr; DoRA) to the UNet and text encoders
with peft.

Plain LoRA linears then compute their base layer and adapter in one autograd node
(fused_lora.py).

Targets follow kohya sd-scripts' SDXL LoRA (networks/lora.py, reference/kohya.md §5), written
as diffusers module names: `attention` is every Linear of a Transformer2DModel's attention
(to_q/k/v/out.0 of attn1 and attn2, plus proj_in/proj_out), `ff` its feed-forward
(ff.net.0.proj, ff.net.2), `conv` the ResNet blocks (3x3 conv1/conv2 and down/upsampler convs
at conv rank, 1x1 conv_shortcut and the time_emb_proj Linear at the linear rank, as kohya's
conv_dim does). Text encoders: self-attention q/k/v/out_proj, plus mlp fc1/fc2 with `ff`.

LoKr follows LyCORIS (`lycoris/modules/lokr.py`), which kohya and SimpleTuner train: LyCORIS'
initialisation (peft `init_weights="lycoris"`: w2 starts at zero), the same factorisation
(`factor`, -1 = automatic), and scale 1 where both Kronecker factors are full matrices (LyCORIS
ignores alpha there; peft would use alpha/r). DoRA is peft's `use_dora`: the magnitude per
output channel, as LyCORIS' `dora_wd` with `wd_on_output` (its default).
"""

from __future__ import annotations

from lorafile.runtime.train import fused_lora

UNET_PATTERNS = {
    "attention": r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0))",
    "ff": r".*attentions\.\d+\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)",
    "conv": r".*(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|(down|up)samplers\.0\.conv)",
}
CONV3X3 = r"(resnets\.\d+\.conv[12]|(down|up)samplers\.0\.conv)"
"""peft matches rank/alpha pattern keys as `(.*\\.)?(key)$` against module names."""
TEXT_PATTERNS = {
    "attention": r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)",
    "ff": r".*mlp\.(fc1|fc2)",
}


def target_regex(patterns: dict[str, str], targets) -> str | None:
    chosen = [patterns[t] for t in targets if t in patterns]
    return "(" + "|".join(f"(?:{p})" for p in chosen) + ")" if chosen else None


def peft_config(adapter: dict, unet: bool = True):
    """The peft config for the resolved adapter settings (plan['resolved']['adapter'])."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    patterns = UNET_PATTERNS if unet else TEXT_PATTERNS
    targets = target_regex(patterns, adapter["targets"] if unet else ("attention", "ff"))
    conv = unet and "conv" in adapter["targets"]
    rank_pattern = {CONV3X3: adapter["conv_rank"]} if conv else {}
    alpha_pattern = {CONV3X3: adapter["conv_alpha"]} if conv else {}
    lycoris_style = {  # LoHa and LoKr take the same size and dropout settings in peft
        "r": adapter["rank"],
        "alpha": adapter["alpha"],
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "module_dropout": adapter["dropout"],
    }
    if adapter["algo"] == "loha":
        # w2_a starts at zero: the untrained adapter changes nothing
        return LoHaConfig(**lycoris_style, init_weights=True)
    if adapter["algo"] == "lokr":
        return LoKrConfig(
            **lycoris_style,
            decompose_factor=adapter.get("factor") or -1,
            init_weights="lycoris",  # LyCORIS' init: w2 (or w2_b) zero, w1 kaiming
        )
    return LoraConfig(
        r=adapter["rank"],
        lora_alpha=adapter["alpha"],
        target_modules=targets,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        lora_dropout=adapter["dropout"],
        init_lora_weights=True,  # kaiming-uniform down, zero up, like kohya
        use_dora=bool(adapter.get("dora")),
    )


def attach(model, adapter: dict, unet: bool = True, fused: bool = True) -> list:
    """Inject the adapter into `model` in place; returns its trainable parameters (fp32).

    `fused`: plain LoRA linears compute base and adapter in one autograd node (fused_lora.py:
    the same parameters and names, fewer ops per step); False keeps peft's layers as they are.
    """
    import torch
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    inject_adapter_in_model(peft_config(adapter, unet), model, adapter_name="default")
    if adapter["algo"] == "lokr":
        lycoris_full_matrix_scale(model)
    if fused:
        fused_lora.fuse(model)
    params = [p for n, p in model.named_parameters() if _is_adapter_param(n)]
    for p in params:
        # Trainable weights stay fp32 under bf16/fp16 mixed precision (diffusers'
        # cast_training_params): half-precision updates of small LoRA deltas round to zero.
        p.data = p.data.to(torch.float32)
        p.requires_grad_(True)
    return params


def lycoris_full_matrix_scale(model, adapter_name: str = "default") -> None:
    """LyCORIS' LoKr rule: a layer whose two Kronecker factors are both full matrices has scale
    1 whatever alpha is (`lokr.py`: `if use_w1 and use_w2: alpha = lora_dim`); peft keeps
    alpha/r, so such layers get scale 1 here. Exported files then carry the same meaning in
    LyCORIS, kohya, ComfyUI and A1111, which apply alpha only to a decomposed factor."""
    for module in model.modules():
        w1, w2 = getattr(module, "lokr_w1", {}), getattr(module, "lokr_w2", {})
        if adapter_name in w1 and adapter_name in w2:
            module.scaling[adapter_name] = 1.0


ADAPTER_TAGS = (".lora_A.", ".lora_B.", ".hada_w", ".lokr_", ".lora_magnitude_vector.")


def _is_adapter_param(name: str) -> bool:
    return any(tag in name for tag in ADAPTER_TAGS)


def adapter_state(model) -> dict:
    """The adapter's weights keyed by peft names (`<module>.lora_A.weight`, `.hada_w1_a`)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model, state: dict) -> None:
    """Load weights saved by `adapter_state`; every key must land (a resume is exact or fails)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(
            f"{len(unexpected)} adapter weights do not fit this model, e.g. {unexpected[0]}"
        )
