"""Apply a kohya-named LoRA/LyCORIS file with the lycoris-lora package's own module math, for
tests that check lorafile's files against LyCORIS (LoHa, LoKr, DoRA)."""

from __future__ import annotations

import copy

from interop import _models, _outputs
from lorafile.runtime.lorafiles.keys import KeyMap, model_path


def lycoris_outputs(base, tensors: dict):
    """Outputs of a copy of `base` with the kohya-named `tensors` applied by LyCORIS (its
    generic wrapper names modules `lycoris_<diffusers path>`)."""
    from lycoris import create_lycoris_from_weights

    keymap, fresh = KeyMap.from_models(_models(base)), copy.deepcopy(base)
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model, renamed = getattr(fresh, component), {}
        for key, value in tensors.items():
            name, suffix = key.split(".", 1)
            owner, mpath = keymap.resolve(name)
            if owner == component:
                renamed[f"lycoris_{model_path(model, mpath).replace('.', '_')}.{suffix}"] = value
        if renamed:
            network, _ = create_lycoris_from_weights(1.0, None, model, weights_sd=renamed)
            assert len(network.loras) == len({k.split(".")[0] for k in renamed})
            network.apply_to()
    return _outputs(fresh)
