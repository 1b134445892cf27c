"""`lorafile inspect` snapshots, one per layout plus a broken file.

Set LORAFILE_UPDATE_SNAPSHOTS=1 to rewrite tests/snapshots/inspect/ after an intended change
(then read the diff)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lorafile.runtime.lorafiles import convert, export
from lorafile.runtime.lorafiles.inspect import inspect_file, render_text
from repo_paths import TESTS
from snapshot import assert_snapshot

SNAPSHOTS = TESTS / "snapshots" / "inspect"


def _lora(gen, fan_in, fan_out, rank, conv=False):
    if conv:
        return {"lora_down.weight": torch.randn(rank, fan_in, 3, 3, generator=gen),
                "lora_up.weight": torch.randn(fan_out, rank, 1, 1, generator=gen)}  # fmt: skip
    return {"lora_down.weight": torch.randn(rank, fan_in, generator=gen),
            "lora_up.weight": torch.randn(fan_out, rank, generator=gen)}  # fmt: skip


def _loha(gen, fan_in, fan_out, rank):
    return {"hada_w1_a": torch.randn(fan_out, rank, generator=gen), "hada_w1_b": torch.randn(rank, fan_in, generator=gen),
            "hada_w2_a": torch.randn(fan_out, rank, generator=gen), "hada_w2_b": torch.randn(rank, fan_in, generator=gen)}  # fmt: skip


def _kohya(modules: dict[str, tuple[dict, float | None]]) -> dict:
    out = {}
    for name, (tensors, alpha) in modules.items():
        out |= {f"{name}.{k}": v for k, v in tensors.items()}
        if alpha is not None:
            out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


KOHYA_META = {
    "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2",
    "ss_base_model_version": "sdxl_base_v1-0", "ss_learning_rate": "0.0001", "ss_steps": "1500",
    "ss_training_started_at": "1767225600.0", "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
    "ss_tag_frequency": json.dumps({"10_wtrclr": {"wtrclr": 40, "lighthouse": 12, "sea": 7}}),
    "ss_dataset_dirs": json.dumps({"10_wtrclr": {"n_repeats": 10, "img_count": 40}}),
    "modelspec.title": "watercolor", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
}  # fmt: skip


def make_files(root: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    files = {}
    files["kohya"] = root / "kohya.safetensors"
    save_file(_kohya({
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (_lora(g, 64, 64, 4), 2.0),
        "lora_unet_output_blocks_0_1_transformer_blocks_1_ff_net_2": (_lora(g, 256, 64, 4), 2.0),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (_lora(g, 32, 32, 4), 2.0),
        "lora_te2_text_model_encoder_layers_1_mlp_fc1": (_lora(g, 64, 128, 4), 2.0),
    }), str(files["kohya"]), metadata=KOHYA_META)  # fmt: skip
    files["kohya-diffusers"] = root / "locon_diffusers_names.safetensors"
    save_file(_kohya({
        "lora_unet_down_blocks_0_resnets_0_conv1": (_lora(g, 32, 32, 8, conv=True), 4.0),
        "lora_unet_mid_block_attentions_0_proj_in": (_lora(g, 64, 64, 8), 4.0),
    }), str(files["kohya-diffusers"]))  # fmt: skip
    files["diffusers"] = root / "pytorch_lora_weights.safetensors"
    adapter = {"unet.r": 4, "unet.lora_alpha": 16, "unet.target_modules": ["proj_in", "to_q"],
               "unet.alpha_pattern": {"down_blocks.1.attentions.0.proj_in": 8}}  # fmt: skip
    tensors = {}
    for path in (
        "down_blocks.1.attentions.0.proj_in",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    ):
        lora = _lora(g, 64, 64, 4)
        tensors |= {
            f"unet.{path}.lora_A.weight": lora["lora_down.weight"],
            f"unet.{path}.lora_B.weight": lora["lora_up.weight"],
        }
    save_file(
        tensors,
        str(files["diffusers"]),
        metadata={"format": "pt", "lora_adapter_metadata": json.dumps(adapter)},
    )
    files["lycoris"] = root / "simpletuner_lycoris.safetensors"
    save_file(_kohya({
        "lycoris_mid_block_attentions_0_transformer_blocks_0_attn2_to_v": (_loha(g, 96, 64, 4), 4.0),
        "lycoris_up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_k": (
            {"lokr_w1": torch.randn(4, 4, generator=g), "lokr_w2": torch.randn(16, 16, generator=g)}, 1.0),
    }), str(files["lycoris"]), metadata={"format": "pt"})  # fmt: skip
    files["lorafile"] = root / "lorafile.safetensors"
    modules = convert.parse_lora(_kohya({
        "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_out_0": (_lora(g, 64, 64, 8), 8.0),
        "lora_unet_input_blocks_1_0_in_layers_2": (_lora(g, 32, 32, 4, conv=True), 2.0),
    }), {}).modules  # fmt: skip
    facts = {"modelspec.date": "2026-01-01T00:00:00", "ss_steps": 100, "ss_seed": 42}
    convert.write_lora(
        modules, files["lorafile"], "kohya", export.training_metadata(facts, modules, "demo")
    )
    files["broken"] = root / "broken.safetensors"
    bad = _lora(g, 64, 64, 4)
    bad["lora_up.weight"][0, 0] = float("nan")
    zero = _lora(g, 64, 64, 8)
    zero["lora_up.weight"].zero_()
    save_file(_kohya({
        "lora_unet_input_blocks_4_1_proj_in": (bad, 4.0),
        "lora_unet_input_blocks_4_1_proj_out": (zero, None),
        "lora_unet_input_blocks_9_9_mystery_layer": (_lora(g, 8, 8, 4), 4.0),
    }), str(files["broken"]))  # fmt: skip
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("inspect"))


def _check_snapshot(name: str, text: str) -> None:
    assert_snapshot(SNAPSHOTS / name, text)


@pytest.mark.parametrize(
    "layout", ["kohya", "kohya-diffusers", "diffusers", "lycoris", "lorafile", "broken"]
)
def test_inspect_snapshot(files, layout):
    report = inspect_file(files[layout])
    expected_layout = {"lorafile": "kohya", "broken": "kohya"}.get(layout, layout)
    assert report["layout"] == expected_layout
    _check_snapshot(f"{layout}.txt", render_text(report))


def test_inspect_findings(files):
    diffusers = inspect_file(files["diffusers"])
    assert diffusers["alphas"] == {"16": 1, "8": 1} and diffusers["scales"] == {"2": 1, "4": 1}
    lycoris = inspect_file(files["lycoris"])
    assert lycoris["algorithms"] == {"LoHa": 1, "LoKr": 1}
    locon = inspect_file(files["kohya-diffusers"])
    assert locon["algorithms"] == {"LoCon": 1, "LoRA": 1}
    broken = " ".join(inspect_file(files["broken"])["problems"])
    for words in ("match no SDXL module", "no alpha", "Mixed ranks", "NaN", "all-zero"):
        assert words in broken
    assert inspect_file(files["kohya"])["problems"] == []


def test_inspect_cli_json(files, capsys):
    from lorafile.cli import main

    assert main(["inspect", str(files["kohya"]), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["coverage"]["text_encoder"] == 1 and report["coverage"]["unet"]["regions"] == {
        "down": 1,
        "up": 1,
    }
    by_key = {m["key"]: m for m in report["per_module"]}
    first = by_key["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    assert first["path"] == "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert (first["algorithm"], first["rank"], first["alpha"], first["scale"]) == (
        "LoRA",
        4,
        2.0,
        0.5,
    )
    words = {item["key"]: item["meaning"] for item in report["metadata"]}
    assert words["ss_network_alpha"] == "network alpha"
    assert main(["inspect", str(files["kohya"])]) == 0
    assert "layout      kohya, original SDXL block names" in capsys.readouterr().out


def test_commands_do_not_import_torch_at_import_time():
    """The compile path must stay light: registering convert/inspect imports no torch."""
    import subprocess
    import sys

    code = (
        "import sys, argparse; import lorafile.commands.convert as c, lorafile.commands.inspect as i;"
        "import lorafile.runtime.lorafiles.convert, lorafile.runtime.lorafiles.inspect, lorafile.runtime.models.sdxl, lorafile.runtime.models.tiny;"
        "p = argparse.ArgumentParser().add_subparsers(); c.register(p); i.register(p);"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kohya_alpha_only_in_metadata(tmp_path):
    """ss_network_alpha / ss_network_args conv_alpha fill missing alpha tensors, with a warning
    that kohya-style loaders would not see them."""
    g = torch.Generator().manual_seed(2)
    tensors = _kohya({
        "lora_unet_input_blocks_4_1_proj_in": (_lora(g, 64, 64, 4), None),
        "lora_unet_input_blocks_1_0_in_layers_2": (_lora(g, 32, 32, 2, conv=True), None),
    })  # fmt: skip
    meta = {
        "ss_network_alpha": "8",
        "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "1"}),
    }
    save_file(tensors, str(tmp_path / "meta_alpha.safetensors"), metadata=meta)
    report = inspect_file(tmp_path / "meta_alpha.safetensors")
    assert report["alphas"] == {"1": 1, "8": 1} and report["alpha_sources"] == {"metadata": 2}
    assert any("alpha only in the metadata" in p for p in report["problems"])


def test_inspect_unreadable_and_pickle_files(tmp_path, capsys):
    from lorafile.cli import main

    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    assert main(["inspect", str(tmp_path / "truncated.safetensors")]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err
    (tmp_path / "lora.pt").write_bytes(b"\x80\x04.")
    assert main(["inspect", str(tmp_path / "lora.pt")]) == 1
    assert "run any code" in capsys.readouterr().err
