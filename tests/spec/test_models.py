"""The tiny SDXL model and base-model loading (diffusers folder, single file, refusals)."""

from __future__ import annotations

import pytest
import torch

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.models import sdxl
from lorafile.runtime.models.tiny import build_tiny_sdxl, tiny_configs

PARTS = ("unet", "text_encoder", "text_encoder_2", "vae")


def _assert_same_weights(a, b):
    for part in PARTS:
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{part}.{key}"


@pytest.fixture(scope="module")
def reference():
    return build_tiny_sdxl(seed=0)


def test_tiny_is_sdxl_shaped(reference):
    unet, te1, te2 = (
        reference.unet.config,
        reference.text_encoder.config,
        reference.text_encoder_2.config,
    )
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size
    assert (
        unet.projection_class_embeddings_input_dim
        == 6 * unet.addition_time_embed_dim + te2.projection_dim
    )
    assert unet.addition_embed_type == "text_time"
    assert te1.hidden_size != te2.hidden_size
    assert reference.tokenizer.model_max_length == 77
    ids = reference.tokenizer("a photo, of ünïcode").input_ids
    assert reference.tokenizer.unk_token_id not in ids[1:-1]


def test_tiny_build_is_deterministic(reference):
    _assert_same_weights(reference, build_tiny_sdxl(seed=0))
    other = build_tiny_sdxl(seed=1)
    assert not torch.equal(other.unet.conv_in.weight, reference.unet.conv_in.weight)


def test_reload_diffusers_folder(tiny_sdxl_dir, reference):
    from diffusers import StableDiffusionXLPipeline

    _assert_same_weights(reference, sdxl.load_sdxl(tiny_sdxl_dir / "diffusers"))
    pipe = StableDiffusionXLPipeline.from_pretrained(
        tiny_sdxl_dir / "diffusers", local_files_only=True
    )
    assert torch.equal(pipe.unet.conv_in.weight, reference.unet.conv_in.weight)


def test_reload_single_file(tiny_sdxl_dir, reference):
    loaded = sdxl.load_sdxl(tiny_sdxl_dir / "tiny_sdxl.safetensors")
    _assert_same_weights(reference, loaded)
    assert loaded.tokenizer("a cat").input_ids == reference.tokenizer("a cat").input_ids
    half = sdxl.load_sdxl(
        tiny_sdxl_dir / "tiny_sdxl.safetensors", dtype=torch.float16, parts=("unet",)
    )
    assert half.unet.dtype == torch.float16 and half.vae is None


def test_single_file_uses_original_layout(tiny_sdxl_dir):
    from safetensors import safe_open

    with safe_open(str(tiny_sdxl_dir / "tiny_sdxl.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in keys
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in keys
    assert (
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
        in keys
    )
    assert "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight" in keys
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight" in keys


def test_single_file_layout_matches_diffusers_converter(reference):
    """diffusers' own single-file readers accept what lorafile writes (independent check)."""
    from diffusers.loaders import single_file_utils as sfu

    state = sdxl.to_single_file_state(reference)
    unet = sfu.convert_ldm_unet_checkpoint(state, dict(reference.unet.config))
    expected = reference.unet.state_dict()
    assert unet.keys() == expected.keys()
    assert all(torch.equal(unet[k], expected[k]) for k in expected)
    vae = sfu.convert_ldm_vae_checkpoint(state, dict(reference.vae.config))
    vae_expected = reference.vae.state_dict()
    assert vae.keys() == vae_expected.keys()
    assert all(torch.equal(vae[k].reshape(vae_expected[k].shape), vae_expected[k]) for k in vae)


def test_refuses_pickle(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    with pytest.raises(DiagnosticError) as err:
        sdxl.load_sdxl(ckpt)
    assert err.value.diagnostics[0].code == "F702"
    assert "run any code" in str(err.value)


def test_missing_path_and_not_sdxl(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(DiagnosticError, match="does not exist"):
        sdxl.load_sdxl(tmp_path / "nope.safetensors")
    bogus = tmp_path / "bogus.safetensors"
    save_file({"weight": torch.zeros(2)}, str(bogus))
    with pytest.raises(DiagnosticError, match="not an SDXL checkpoint"):
        sdxl.load_sdxl(bogus)
    sd15 = tmp_path / "sd15.safetensors"
    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(sd15)
    )
    with pytest.raises(DiagnosticError, match="not SDXL's shapes"):
        sdxl.load_sdxl(sd15)
    with pytest.raises(DiagnosticError, match="not a diffusers SDXL model"):
        sdxl.load_sdxl(tmp_path)


@pytest.mark.parametrize(
    ("damage", "whole", "vae_alone"),
    [
        (lambda text: text[:-10], "is not valid JSON", "is not valid JSON"),
        (
            lambda text: '{"unet": {}}',
            "has no config for text_encoder, text_encoder_2, vae",
            "has no config for",
        ),
    ],
)
def test_damaged_config_metadata_is_f703(tiny_sdxl_dir, tmp_path, damage, whole, vae_alone):
    """A lorafile single file whose `lorafile.configs` metadata another tool cut or edited:
    loading it (whole, or its VAE alone) says so as F703 instead of a JSON traceback."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_sdxl_dir / "tiny_sdxl.safetensors"), "pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    metadata[sdxl.CONFIG_METADATA_KEY] = damage(metadata[sdxl.CONFIG_METADATA_KEY])
    damaged = tmp_path / "damaged.safetensors"
    save_file(state, str(damaged), metadata=metadata)
    for load, why in ((sdxl.load_sdxl, whole), (sdxl.load_vae, vae_alone)):
        with pytest.raises(DiagnosticError) as err:
            load(damaged)
        found = err.value.diagnostics[0]
        assert found.code == "F703" and "`damaged.safetensors`" in found.message
        assert why in found.message


def test_full_size_meta_architecture():
    full = sdxl.build_sdxl_meta()
    assert full.unet.conv_in.weight.device.type == "meta"
    assert sum(p.numel() for p in full.unet.parameters()) == 2_567_463_684
    assert full.text_encoder.config.num_hidden_layers == 12
    assert full.text_encoder_2.config.num_hidden_layers == 32
    assert full.text_encoder_2.config.hidden_size + full.text_encoder.config.hidden_size == 2048


def test_full_size_single_file_shapes_are_recognised():
    """SDXL's shipped configs round-trip through the SGM names (shape probe, no weights)."""
    full = sdxl.build_sdxl_meta(parts=("unet",))
    cfg = sdxl.sdxl_config("unet")
    names = [n for n, _ in full.unet.named_parameters()]
    from lorafile.runtime.models.sgm_keys import unet_from_sgm, unet_to_sgm

    sgm = {unet_to_sgm(n, cfg) for n in names}
    assert len(sgm) == len(names)
    assert "output_blocks.8.0.skip_connection.weight" in sgm
    assert "input_blocks.7.1.transformer_blocks.9.ff.net.2.weight" in sgm
    assert all(unet_from_sgm(unet_to_sgm(n, cfg), cfg) == n for n in names)
    assert tiny_configs()["unet"]["layers_per_block"] == cfg["layers_per_block"]


def test_full_size_single_file_layout_on_meta():
    """The full SDXL maps to the real single-file key names and back, shapes intact."""
    full = sdxl.build_sdxl_meta(parts=("unet", "text_encoder", "text_encoder_2", "vae"))
    state = sdxl.to_single_file_state(full)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert shapes["model.diffusion_model.output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes[
        "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight"
    ] == (1280, 2048)
    assert shapes["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"] == (
        3840,
        1280,
    )
    assert shapes["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    assert shapes[
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight"
    ] == (768, 3072)
    assert shapes["first_stage_model.decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    configs = sdxl.single_file_configs(state, {})
    split = sdxl.from_single_file_state(state, configs)
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        expected = {
            k: tuple(v.shape)
            for k, v in getattr(full, part).state_dict().items()
            if "position_ids" not in k
        }
        got = {
            k.removeprefix("text_model.") if part == "text_encoder" else k: tuple(v.shape)
            for k, v in split[part].items()
        }
        expected = {
            k.removeprefix("text_model.") if part == "text_encoder" else k: v
            for k, v in expected.items()
        }
        assert got == expected, part


def test_vae_alone_from_every_source(tiny_sdxl_dir, reference, tmp_path):
    """A recipe's `vae` may be a VAE folder, a pipeline folder, a VAE file or a checkpoint."""
    from safetensors.torch import save_file

    reference.vae.save_pretrained(tmp_path / "vae_folder")
    ldm = {
        k: v
        for k, v in sdxl.to_single_file_state(reference).items()
        if k.startswith("first_stage_model.")
    }
    meta = {sdxl.CONFIG_METADATA_KEY: __import__("json").dumps({"vae": dict(reference.vae.config)})}
    save_file(
        {k.removeprefix("first_stage_model."): v for k, v in ldm.items()},
        str(tmp_path / "vae.safetensors"),
        meta,
    )
    sources = [
        tmp_path / "vae_folder",
        tiny_sdxl_dir / "diffusers",
        tmp_path / "vae.safetensors",
        tiny_sdxl_dir / "tiny_sdxl.safetensors",
    ]
    expected = reference.vae.state_dict()
    for source in sources:
        vae = sdxl.load_sdxl(source, parts=("vae",)).vae
        got = vae.state_dict()
        assert got.keys() == expected.keys(), source
        assert all(torch.equal(got[k], expected[k]) for k in expected), source
    with pytest.raises(DiagnosticError, match="not an SDXL VAE"):
        save_file(
            {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(tmp_path / "small.safetensors")
        )
        sdxl.load_sdxl(tmp_path / "small.safetensors", parts=("vae",))
