"""LoRA export/convert interop on the tiny model: diffusers and lycoris reproduce lorafile's
adapters, and conversions between layouts round-trip exactly (issue 8, issue 6 interop)."""

from __future__ import annotations

import copy
import hashlib
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from interop import TOL, _diffusers_outputs, _max_diff, _models, _outputs
from lora_factory import kohya_module
from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.lorafiles import convert, export
from lorafile.runtime.lorafiles.keys import peft_target_modules
from lorafile.runtime.models.tiny import build_tiny_sdxl


@pytest.fixture(scope="module")
def base():
    return build_tiny_sdxl(seed=0)


def _adapted(base, algo="lora", unet_targets=("attention", "ff", "conv"), text=True):
    """A copy of the tiny model with a random (non-zero) adapter: alpha != rank everywhere,
    rsLoRA on text encoder 2, so a wrong scale shows."""
    from peft import LoHaConfig, LoraConfig, inject_adapter_in_model

    comp = copy.deepcopy(base)
    targets = peft_target_modules(_models(comp), [*unet_targets, *(["text"] if text else [])])
    torch.manual_seed(0)
    if algo == "loha":
        comp.unet.add_adapter(
            LoHaConfig(r=4, alpha=6, target_modules=targets["unet"], init_weights=False)
        )
        te = LoHaConfig(r=2, alpha=1, target_modules=targets["text_encoder"], init_weights=False)
        inject_adapter_in_model(te, comp.text_encoder)
        return comp
    # 3x3 convs at their own rank/alpha, as kohya's conv_dim/conv_alpha (peft patterns).
    conv = r"(resnets\.\d+\.conv[12]|(down|up)samplers\.0\.conv)"
    unet = LoraConfig(r=4, lora_alpha=8, target_modules=targets["unet"], init_lora_weights=False,
                      rank_pattern={conv: 2}, alpha_pattern={conv: 3})  # fmt: skip
    comp.unet.add_adapter(unet)
    if text:
        te1 = LoraConfig(
            r=4, lora_alpha=2, target_modules=targets["text_encoder"], init_lora_weights=False
        )
        te2 = LoraConfig(
            r=2,
            lora_alpha=3,
            target_modules=targets["text_encoder_2"],
            init_lora_weights=False,
            use_rslora=True,
        )
        inject_adapter_in_model(te1, comp.text_encoder)
        inject_adapter_in_model(te2, comp.text_encoder_2)
    return comp


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """(adapted model, its outputs, kohya file) for LoRA + LoCon + text-encoder LoRA."""
    comp = _adapted(base)
    path = tmp_path_factory.mktemp("lora") / "kohya.safetensors"
    export.save_adapter(comp, path, metadata={"ss_steps": 10, "ss_output_name": "tiny"})
    return comp, _outputs(comp), path


def test_kohya_file_layout(trained):
    _, _, path = trained
    tensors = load_file(str(path))
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert "lora_unet_output_blocks_2_2_conv.lora_down.weight" in tensors  # LoCon, upsampler
    conv_down = tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"]
    assert conv_down.shape[:1] + conv_down.shape[-2:] == (2, 3, 3)
    assert float(tensors["lora_unet_input_blocks_1_0_in_layers_2.alpha"]) == 3.0
    assert float(tensors["lora_unet_middle_block_1_proj_in.alpha"]) == 8.0
    assert float(tensors["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha"]) == 2.0
    te2_alpha = float(tensors["lora_te2_text_model_encoder_layers_1_mlp_fc2.alpha"])
    assert te2_alpha == pytest.approx(3 * math.sqrt(2))  # rsLoRA: scale 3/sqrt(2) = alpha/r
    meta = convert.read_safetensors(path)[1]
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8"
    assert (
        meta["ss_steps"] == "10"
        and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    )
    # sd-webui-additional-networks' model hash: sha256 of everything after the header.
    data = path.read_bytes()
    body = data[8 + int.from_bytes(data[:8], "little") :]
    assert meta["sshs_model_hash"] == hashlib.sha256(body).hexdigest()
    assert len(meta["sshs_legacy_hash"]) == 8


def test_kohya_file_reproduces_in_diffusers(base, trained):
    """LoRA + LoCon + alpha != rank + rsLoRA, via StableDiffusionXLPipeline.load_lora_weights."""
    _, expected, path = trained
    assert _max_diff(expected, _outputs(base)) > 1e-2  # the adapter changes every output
    assert _max_diff(expected, _diffusers_outputs(base, path)) < TOL


def test_kohya_file_loads_back_into_lorafile(base, trained):
    _, expected, path = trained
    comp = copy.deepcopy(base)
    export.load_adapter(path, comp)
    assert _max_diff(expected, _outputs(comp)) < TOL


def test_diffusers_layout_reproduces_in_diffusers(base, trained, tmp_path):
    comp, expected, _ = trained
    path = export.save_adapter(comp, tmp_path / "d.safetensors", layout="diffusers")
    assert any(
        k.startswith("unet.down_blocks.") and k.endswith("lora_A.weight")
        for k in load_file(str(path))
    )
    assert _max_diff(expected, _diffusers_outputs(base, path)) < TOL


def _same_files(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_round_trips_are_exact(base, trained, tmp_path):
    _, expected, kohya = trained
    convert.convert_file(kohya, tmp_path / "d.safetensors", "diffusers")
    assert _max_diff(expected, _diffusers_outputs(base, tmp_path / "d.safetensors")) < TOL
    convert.convert_file(tmp_path / "d.safetensors", tmp_path / "k.safetensors", "kohya")
    _same_files(kohya, tmp_path / "k.safetensors")
    convert.convert_file(tmp_path / "k.safetensors", tmp_path / "d2.safetensors", "diffusers")
    _same_files(tmp_path / "d.safetensors", tmp_path / "d2.safetensors")


def test_loha_reproduces_with_lycoris(base, tmp_path):
    """A LoHa file, loaded by the lycoris-lora package (its own module math), gives the same
    outputs as peft's LoHa. lycoris' generic wrapper names modules `lycoris_<diffusers path>`."""
    from lycoris import create_lycoris_from_weights

    from lorafile.runtime.lorafiles.keys import KeyMap, model_path

    comp = _adapted(base, algo="loha")
    expected = _outputs(comp)
    path = export.save_adapter(comp, tmp_path / "loha.safetensors")
    tensors = load_file(str(path))
    assert "lora_unet_input_blocks_1_0_in_layers_2.hada_w1_a" in tensors
    keymap, fresh = KeyMap.from_models(_models(base)), copy.deepcopy(base)
    for component in ("unet", "text_encoder"):
        model, renamed = getattr(fresh, component), {}
        for key, value in tensors.items():
            name, suffix = key.split(".", 1)
            owner, mpath = keymap.resolve(name)
            if owner == component:
                renamed[f"lycoris_{model_path(model, mpath).replace('.', '_')}.{suffix}"] = value
        network, _ = create_lycoris_from_weights(1.0, None, model, weights_sd=renamed)
        assert len(network.loras) == len({k.split(".")[0] for k in renamed})
        network.apply_to()
    assert _max_diff(expected, _outputs(fresh)) < TOL
    back = copy.deepcopy(base)
    export.load_adapter(path, back)
    assert _max_diff(expected, _outputs(back)) < TOL
    convert.convert_file(path, tmp_path / "loha_d.safetensors", "diffusers")
    convert.convert_file(tmp_path / "loha_d.safetensors", tmp_path / "loha_k.safetensors", "kohya")
    _same_files(path, tmp_path / "loha_k.safetensors")


def test_simpletuner_style_file_converts_with_right_scale(base, tmp_path):
    """peft keys, alpha only in diffusers' adapter metadata, rank 4 != alpha 16."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    comp = copy.deepcopy(base)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,
    )
    torch.manual_seed(3)
    comp.unet.add_adapter(config)
    expected = _outputs(comp)
    meta = {
        k: v
        for k, v in config.to_dict().items()
        if k in ("r", "lora_alpha", "target_modules", "alpha_pattern", "rank_pattern")
    }
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=get_peft_model_state_dict(comp.unet),
        unet_lora_adapter_metadata=meta,
    )
    src = tmp_path / "pytorch_lora_weights.safetensors"
    lora, _ = convert.convert_file(src, tmp_path / "kohya.safetensors", "kohya")
    assert lora.layout == "diffusers" and {m.alpha_source for m in lora.modules} == {"metadata"}
    tensors = load_file(str(tmp_path / "kohya.safetensors"))
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {16.0}
    got = _diffusers_outputs(base, tmp_path / "kohya.safetensors")
    assert _max_diff(expected[:1], got[:1]) < TOL
    assert _max_diff(expected[:1], _outputs(base)[:1]) > 1e-2


def test_lycoris_prefixed_and_diffusers_named_kohya_convert(trained, tmp_path):
    """SimpleTuner LyCORIS (`lycoris_` + diffusers names) and kohya with diffusers block
    names both convert to the same kohya file as the original UNet modules."""
    from lorafile.runtime.lorafiles.keys import sdxl_keymap

    _, _, kohya = trained
    keymap, tensors = sdxl_keymap(), load_file(str(kohya))
    unet = {k: v for k, v in tensors.items() if k.startswith("lora_unet_")}
    for prefix, layout in (("lycoris_", "lycoris"), ("lora_unet_", "kohya-diffusers")):
        renamed = {}
        for key, value in unet.items():
            name, suffix = key.split(".", 1)
            path = keymap.resolve(name)[1]
            renamed[f"{prefix}{path.replace('.', '_')}.{suffix}"] = value
        src, dst = tmp_path / f"{layout}.safetensors", tmp_path / f"{layout}-kohya.safetensors"
        save_file(renamed, str(src))
        lora, _ = convert.convert_file(src, dst, "kohya")
        assert lora.layout == layout
        out = load_file(str(dst))
        assert out.keys() == unet.keys()
        assert all(torch.equal(out[k], unet[k]) for k in unet)


def test_hand_made_kohya_file_loads_into_lorafile(base, tmp_path):
    """Names written by hand after sd-scripts' rule (prefix + SGM path, `.` -> `_`)."""
    g = torch.Generator().manual_seed(5)
    unet, te1, te2 = base.unet, base.text_encoder, base.text_encoder_2
    layers = {
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k": unet.down_blocks[1]
        .attentions[0]
        .transformer_blocks[1]
        .attn2.to_k,
        "lora_unet_middle_block_1_transformer_blocks_0_ff_net_2": unet.mid_block.attentions[0]
        .transformer_blocks[0]
        .ff.net[2],
        "lora_unet_output_blocks_3_0_in_layers_2": unet.up_blocks[1].resnets[0].conv1,
        "lora_te1_text_model_encoder_layers_1_mlp_fc1": te1.encoder.layers[1].mlp.fc1,
        "lora_te2_text_model_encoder_layers_0_self_attn_out_proj": te2.text_model.encoder.layers[
            0
        ].self_attn.out_proj,
    }
    tensors, deltas = {}, {}
    for i, (name, layer) in enumerate(layers.items()):
        rank, alpha = 2 + i % 2, 1.0 + i
        if isinstance(layer, torch.nn.Conv2d):
            down = torch.randn(rank, layer.in_channels, 3, 3, generator=g)
            up = torch.randn(layer.out_channels, rank, 1, 1, generator=g)
            deltas[name] = (
                (up.flatten(1) @ down.flatten(1)).reshape(layer.weight.shape) * alpha / rank
            )
        else:
            down = torch.randn(rank, layer.in_features, generator=g)
            up = torch.randn(layer.out_features, rank, generator=g)
            deltas[name] = up @ down * alpha / rank
        tensors |= {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(alpha),
        }
    save_file(tensors, str(tmp_path / "hand.safetensors"))
    comp = copy.deepcopy(base)
    lora = export.load_adapter(tmp_path / "hand.safetensors", comp)
    assert lora.layout == "kohya" and len(lora.modules) == 5
    adapted = {
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k": comp.unet.down_blocks[1]
        .attentions[0]
        .transformer_blocks[1]
        .attn2.to_k,
        "lora_unet_middle_block_1_transformer_blocks_0_ff_net_2": comp.unet.mid_block.attentions[0]
        .transformer_blocks[0]
        .ff.net[2],
        "lora_unet_output_blocks_3_0_in_layers_2": comp.unet.up_blocks[1].resnets[0].conv1,
        "lora_te1_text_model_encoder_layers_1_mlp_fc1": comp.text_encoder.encoder.layers[1].mlp.fc1,
        "lora_te2_text_model_encoder_layers_0_self_attn_out_proj": comp.text_encoder_2.text_model.encoder.layers[
            0
        ].self_attn.out_proj,
    }
    for name, layer in adapted.items():
        assert torch.allclose(layer.get_delta_weight("default"), deltas[name], atol=1e-5), name
    assert _max_diff(_outputs(comp), _diffusers_outputs(base, tmp_path / "hand.safetensors")) < TOL


def test_refusals_and_lossy(trained, tmp_path):
    _, _, kohya = trained
    pickle = tmp_path / "lora.ckpt"
    pickle.write_bytes(b"\x80\x04.")
    with pytest.raises(DiagnosticError, match="pickle"):
        convert.convert_file(pickle, tmp_path / "out.safetensors", "kohya")
    with pytest.raises(DiagnosticError, match="overwrite"):
        convert.convert_file(kohya, kohya, "kohya")
    tensors = load_file(str(kohya))
    tensors["lora_unet_time_embed_0.lokr_w1"] = torch.ones(2, 2)
    tensors["lora_unet_not_a_layer.lora_down.weight"] = torch.ones(2, 2)
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    with pytest.raises(DiagnosticError) as err:
        convert.convert_file(tmp_path / "odd.safetensors", tmp_path / "o.safetensors", "diffusers")
    text = str(err.value)
    assert "lora_unet_not_a_layer" in text and "lora_unet_time_embed_0` (LoKr" in text
    assert not (tmp_path / "o.safetensors").exists()
    _, bag = convert.convert_file(
        tmp_path / "odd.safetensors", tmp_path / "o.safetensors", "diffusers", allow_lossy=True
    )
    assert [d.code for d in bag] == ["F711"]
    assert not any("not_a_layer" in k for k in load_file(str(tmp_path / "o.safetensors")))


def test_missing_alpha_and_dtype(trained, tmp_path):
    _, _, kohya = trained
    tensors = {k: v for k, v in load_file(str(kohya)).items() if not k.endswith(".alpha")}
    save_file(tensors, str(tmp_path / "noalpha.safetensors"))
    _, bag = convert.convert_file(
        tmp_path / "noalpha.safetensors",
        tmp_path / "a.safetensors",
        "kohya",
        dtype="fp16",
        alpha=2.5,
    )
    assert [d.code for d in bag] == ["F712"]
    out = load_file(str(tmp_path / "a.safetensors"))
    assert {float(v) for k, v in out.items() if k.endswith(".alpha")} == {2.5}
    assert {v.dtype for k, v in out.items() if not k.endswith(".alpha")} == {torch.float16}
    convert.convert_file(tmp_path / "noalpha.safetensors", tmp_path / "b.safetensors", "kohya")
    out = load_file(str(tmp_path / "b.safetensors"))
    assert float(out["lora_unet_middle_block_1_proj_in.alpha"]) == 4.0  # rank: scale 1


def test_cli_convert_and_inspect(trained, tmp_path, capsys):
    from lorafile.cli import main

    _, _, kohya = trained
    out = tmp_path / "cli.safetensors"
    assert main(["convert", str(kohya), "--to", "diffusers", "-o", str(out)]) == 0
    assert "diffusers" in capsys.readouterr().out and out.exists()
    assert (
        main(["convert", str(tmp_path / "missing.safetensors"), "--to", "kohya", "-o", str(out)])
        == 1
    )
    assert "does not exist" in capsys.readouterr().err


def test_bare_peft_file_with_adapter_config(base, tmp_path):
    """peft's own save format: `base_model.model.` keys, alpha in adapter_config.json beside."""
    import json

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    comp = copy.deepcopy(base)
    comp.unet.add_adapter(
        LoraConfig(r=2, lora_alpha=5, target_modules=["to_q", "proj_out"], init_lora_weights=False)
    )
    state = {f"base_model.model.{k}": v for k, v in get_peft_model_state_dict(comp.unet).items()}
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"r": 2, "lora_alpha": 5, "peft_type": "LORA"})
    )
    lora, _ = convert.convert_file(
        tmp_path / "adapter_model.safetensors", tmp_path / "k.safetensors", "kohya"
    )
    assert lora.layout == "diffusers" and all(m.component == "unet" for m in lora.modules)
    alphas = {
        float(v)
        for k, v in load_file(str(tmp_path / "k.safetensors")).items()
        if k.endswith(".alpha")
    }
    assert alphas == {5.0}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("unet.mid_block.attentions.0.proj_in.lora_A.weight", ("unet.mid_block.attentions.0.proj_in", "lora_down.weight")),
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight",
         ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "lora_up.weight")),
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight",
         ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0", "lora_down.weight")),
        ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
         ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "lora_up.weight")),
        ("lora_unet_input_blocks_4_1_proj_in.lokr_w1_a", ("lora_unet_input_blocks_4_1_proj_in", "lokr_w1_a")),
        ("base_model.model.up_blocks.0.attentions.0.proj_out.lora_B.default.weight",
         ("up_blocks.0.attentions.0.proj_out", "lora_up.weight")),
        ("lora_unet_input_blocks_4_1_proj_in.weight", None),
    ],
)  # fmt: skip
def test_split_key_spellings(key, expected):
    """Every spelling of a module's parameters in the wild, down to (module, kohya suffix)."""
    assert convert.split_key(key) == expected


def test_full_size_file_round_trips_and_inspects(tmp_path):
    """A rank-1 LoCon + text-encoder file with every module of the real SDXL (1052 modules)."""
    from lorafile.runtime.lorafiles.inspect import inspect_file
    from lorafile.runtime.lorafiles.keys import sdxl_keymap

    keymap, g, tensors = sdxl_keymap(), torch.Generator().manual_seed(7), {}
    for m in keymap.select(["attention", "ff", "conv"], text_encoder=True):
        name = keymap.kohya(m.component, m.path)
        k = (3, 3) if m.kind == "conv3x3" else (1, 1) if m.kind == "conv1x1" else ()
        tensors[f"{name}.lora_down.weight"] = torch.randn(1, m.in_features, *k, generator=g)
        up_k = (1, 1) if k else ()
        tensors[f"{name}.lora_up.weight"] = torch.randn(m.out_features, 1, *up_k, generator=g)
        tensors[f"{name}.alpha"] = torch.tensor(0.5)
    save_file(tensors, str(tmp_path / "full.safetensors"))
    report = inspect_file(tmp_path / "full.safetensors")
    assert report["coverage"]["unet"]["total"] == 722 + 66
    assert report["coverage"]["unet"]["kinds"] == {"attention": 582, "ff": 140, "conv": 66}
    assert (report["coverage"]["text_encoder"], report["coverage"]["text_encoder_2"]) == (72, 192)
    assert report["algorithms"] == {"LoCon": 38, "LoRA": 1014} and report["problems"] == []
    convert.convert_file(tmp_path / "full.safetensors", tmp_path / "d.safetensors", "diffusers")
    convert.convert_file(tmp_path / "d.safetensors", tmp_path / "k.safetensors", "kohya")
    _same_files(tmp_path / "full.safetensors", tmp_path / "k.safetensors")


def _damaged_file(path, damage: str):
    """A two-module kohya file whose first module is damaged the way `damage` names."""
    g = torch.Generator().manual_seed(0)
    name = "lora_unet_input_blocks_4_1_proj_in"
    tensors = kohya_module(name, g) | kohya_module(
        "lora_unet_input_blocks_4_1_proj_out", g, alpha=None
    )
    if damage == "rank":
        tensors[f"{name}.lora_down.weight"] = torch.randn(5, 64, generator=g)
    elif damage == "alpha":
        tensors[f"{name}.alpha"] = torch.ones(3)
    elif damage == "no-up":
        del tensors[f"{name}.lora_up.weight"]
    elif damage == "1d":
        tensors[f"{name}.lora_down.weight"] = torch.randn(4, generator=g)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("rank", "lora_down has rank 5 but lora_up rank 4"),
        ("alpha", "its alpha holds 3 values, not one number"),
        ("no-up", "lora_down has no lora_up beside it"),
        ("1d", "lora_down has shape [4] and lora_up [64, 4]"),
    ],
)
def test_damaged_module_is_named_not_a_traceback(tmp_path, capsys, damage, why):
    """Factors that cannot make one weight change: inspect lists the module as a problem;
    convert (F711), resize and merge (F720) refuse it by name and write nothing."""
    from lorafile.cli import main
    from lorafile.runtime.lorafiles.inspect import inspect_file

    src = _damaged_file(tmp_path / "damaged.safetensors", damage)
    assert any(why in p for p in inspect_file(src)["problems"])
    out = tmp_path / "out.safetensors"
    for args, code in (
        (["convert", str(src), "--to", "diffusers", "-o", str(out)], "F711"),
        (["resize", str(src), "--rank", "2", "-o", str(out)], "F720"),
        (["merge", str(src), str(src), "-o", str(out)], "F720"),
    ):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert f"error[{code}]" in err and why in err and "proj_in" in err, err
        assert not out.exists()


@pytest.mark.parametrize("alpha", ["nan", "inf", "0", "-4"])
def test_alpha_option_that_is_not_a_positive_number_is_f712(trained, tmp_path, capsys, alpha):
    from lorafile.cli import main

    out, src = tmp_path / "out.safetensors", trained[2]
    assert main(["convert", str(src), "--to", "kohya", "--alpha", alpha, "-o", str(out)]) == 1
    assert "error[F712]" in capsys.readouterr().err and not out.exists()
