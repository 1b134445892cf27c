"""The VRAM model counts LoKr factors, DoRA magnitudes and activations, and the EMA copy
(issue 18): shapes against peft's own layers at SDXL sizes, counts against hand sums."""

from __future__ import annotations

import math

import pytest
import torch

from lorafile.compiler import vram
from lorafile.spec.models import Adapter, Ema
from vram_helpers import recipe


@pytest.mark.parametrize(
    ("fan_in", "fan_out", "kernel", "rank", "factor"),
    [
        (1280, 10240, 1, 16, None),  # ff.net.0.proj, automatic split, w2 decomposed
        (5120, 1280, 1, 16, 8),
        (2048, 640, 1, 1024, 12),  # SimpleTuner's example: full matrices
        (640, 640, 1, 4, 4),
        (1280, 1280, 3, 8, 8),  # 3x3 conv, w2 decomposed as (out_k, r) @ (r, in_n * 9)
        (320, 640, 3, 64, 16),  # 3x3 conv, w2 full
    ],
)
def test_lokr_shapes_are_peft_lycoris_shapes(fan_in, fan_out, kernel, rank, factor):
    from peft import LoKrConfig, inject_adapter_in_model

    with torch.device("meta"):
        layer = (
            torch.nn.Linear(fan_in, fan_out)
            if kernel == 1
            else torch.nn.Conv2d(fan_in, fan_out, kernel, padding=1)
        )
        model = torch.nn.Sequential(layer)
        config = LoKrConfig(r=rank, alpha=rank, target_modules=["0"],
                            decompose_factor=factor or -1, init_weights="lycoris")  # fmt: skip
        inject_adapter_in_model(config, model)
    peft_shapes = sorted(tuple(p.shape) for n, p in model.named_parameters() if ".lokr_" in n)
    assert sorted(vram.lokr_tensors(fan_in, fan_out, kernel, rank, factor)) == peft_shapes


def test_dora_adds_one_magnitude_per_output_channel():
    plain = vram.adapter_params(recipe(adapter={"rank": 8}))
    dora = vram.adapter_params(recipe(adapter={"rank": 8, "dora": True}))
    # Hand sum of out_features over attention (687,360) and ff (748,800), UNET_MODULES.
    attention = 640 * 60 + 640 * 20 + 1280 * 360 + 1280 * 120 + 640 * 10 + 1280 * 12
    ff = 5120 * 10 + 640 * 10 + 10240 * 60 + 1280 * 60
    assert dora - plain == attention + ff == 1_436_160


def test_lokr_counts_by_hand():
    """factor 8, rank 4 on ff.net.2 (5120 -> 1280): w1 8x8, w2_a 160x4, w2_b 4x640."""
    assert vram.lokr_tensors(5120, 1280, 1, 4, 8) == [(8, 8), (160, 4), (4, 640)]
    r = recipe(adapter={"algo": "lokr", "rank": 4, "factor": 8, "targets": ("ff",)})
    tensors = vram.adapter_tensors(r)
    assert vram.adapter_params(r) == sum(math.prod(s) * c for s, c in tensors)
    assert vram.adapter_params(r) < vram.adapter_params(recipe(adapter={"rank": 4}))


def test_dora_activations_and_ema_copy():
    def component(est, name):
        return next((c.bytes for c in est.components if c.name == name), 0)

    for checkpointing in (True, False):
        base = recipe(adapter={"rank": 8}, train={"steps": 10, "checkpointing": checkpointing})
        dora = base.model_copy(update={"adapter": Adapter(rank=8, dora=True)})
        more = component(vram.estimate(dora), "activations") - component(
            vram.estimate(base), "activations"
        )
        assert more > 0
    with_ema = base.model_copy(update={"ema": Ema()})
    est = vram.estimate(with_ema)
    assert component(est, "EMA of the adapter") == vram.adapter_params(with_ema) * 4
    assert component(vram.estimate(with_ema, "simpletuner"), "EMA of the adapter") == 0


@pytest.mark.parametrize("factor", [8, 12, 16, 64])
def test_rank_1024_is_full_matrix_on_every_sdxl_layer(factor):
    """Why SimpleTuner's LoKr example (linear_dim 10000, factor 12) reads as rank 1024: from
    factor 8 up, w2 is a full matrix on every SDXL layer, as with any larger dim."""
    for _, fan_in, fan_out, kernel, _ in vram.UNET_MODULES + vram.TEXT_ENCODER_MODULES:
        shapes = vram.lokr_tensors(fan_in, fan_out, kernel, 1024, factor)
        assert shapes == vram.lokr_tensors(fan_in, fan_out, kernel, 10000, factor)
        assert len(shapes) == 2
