"""`lorafile merge --base` on the tiny model: the merged single file computes what diffusers'
load_lora_weights (LoRA, LoCon, both text encoders) or peft (LoHa) computes at the same
strength, its metadata records the LoRAs, and user mistakes are coded diagnostics."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from lora_factory import lora_file, text_outputs, unet_output
from lora_factory import single_threaded as single_threaded  # autouse fixture
from lorafile.cli import main
from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.runtime.lorafiles import export
from lorafile.runtime.lorafiles.merge import LoraSpec, merge_into_base, parse_lora_spec
from lorafile.runtime.models.sdxl import load_sdxl

TOL = 1e-4


@pytest.fixture(scope="module")
def base(tiny_sdxl_dir):
    return load_sdxl(tiny_sdxl_dir / "diffusers")


@pytest.fixture(scope="module")
def loras(base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    a = lora_file(base, folder / "a.safetensors", seed=0)
    b = lora_file(base, folder / "b.safetensors", seed=1, rank=3, alpha=1.5)
    return a, b


def _diffusers(tiny_sdxl_dir, paths_and_weights):
    pipe = load_sdxl(tiny_sdxl_dir / "diffusers").pipeline()
    names = []
    for i, (path, _) in enumerate(paths_and_weights):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
        names.append(f"l{i}")
    pipe.set_adapters(names, adapter_weights=[w for _, w in paths_and_weights])
    return pipe


def _max(a, b):
    return float((a - b).abs().max())


def test_merged_checkpoint_equals_diffusers_at_the_same_strength(
    tiny_sdxl_dir, base, loras, tmp_path
):
    a, _ = loras
    out = tmp_path / "merged.safetensors"
    result = merge_into_base(tiny_sdxl_dir / "tiny_sdxl.safetensors", [LoraSpec(a, 0.7)], out)
    merged = load_sdxl(out)
    reference = _diffusers(tiny_sdxl_dir, [(a, 0.7)])
    assert _max(unet_output(merged), unet_output(base)) > 1e-2  # the LoRA changes the UNet
    assert _max(unet_output(merged), unet_output(reference)) < TOL
    for got, want, before in zip(
        text_outputs(merged), text_outputs(reference), text_outputs(base), strict=True
    ):
        assert _max(got, before) > 1e-3  # both text encoders are merged (bigG: fused q/k/v)
        assert _max(got, want) < TOL
    modules = export.read_adapter(a, base).modules
    fused = [m for m in modules if m.component == "text_encoder_2" and m.path.endswith("q_proj")]
    assert result.weights_changed == len(modules) - 2 * len(fused)  # q, k, v: one base tensor


def test_two_loras_sum_with_their_strengths(tiny_sdxl_dir, loras, tmp_path):
    a, b = loras
    out = tmp_path / "two.safetensors"
    merge_into_base(
        tiny_sdxl_dir / "tiny_sdxl.safetensors", [LoraSpec(a, 0.5), LoraSpec(b, -1.0)], out
    )
    reference = _diffusers(tiny_sdxl_dir, [(a, 0.5), (b, -1.0)])
    assert _max(unet_output(load_sdxl(out)), unet_output(reference)) < TOL


def test_loha_merges_like_peft(tiny_sdxl_dir, base, tmp_path):
    loha = lora_file(base, tmp_path / "loha.safetensors", algo="loha", rank=4, alpha=6)
    out = tmp_path / "loha_merged.safetensors"
    merge_into_base(tiny_sdxl_dir / "tiny_sdxl.safetensors", [LoraSpec(loha)], out)
    reference = load_sdxl(tiny_sdxl_dir / "diffusers")
    export.load_adapter(loha, reference)  # peft's own LoHa math
    assert _max(unet_output(load_sdxl(out)), unet_output(reference)) < TOL


def test_metadata_records_each_lora_and_keeps_the_base(tiny_sdxl_dir, loras, tmp_path):
    a, b = loras
    out = tmp_path / "m.safetensors"
    merge_into_base(
        tiny_sdxl_dir / "tiny_sdxl.safetensors", [LoraSpec(a, 0.7), LoraSpec(b)], out, "fp16"
    )
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    records = json.loads(meta["lorafile.merged_loras"])
    assert [(r["file"], r["strength"]) for r in records] == [
        ("a.safetensors", 0.7),
        ("b.safetensors", 1.0),
    ]
    assert records[0]["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert (
        "lorafile.configs" in meta
        and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    )
    assert dtypes == {"F16"}
    assert load_sdxl(out).unet.dtype == torch.float16


def test_parse_strength_suffix():
    assert parse_lora_spec("a.safetensors:0.8") == LoraSpec(
        __import__("pathlib").Path("a.safetensors"), 0.8
    )
    assert parse_lora_spec("dir/a.safetensors").strength == 1.0
    assert parse_lora_spec("a.safetensors:-1").strength == -1.0
    with pytest.raises(DiagnosticError) as err:
        parse_lora_spec("a.safetensors:strong")
    assert err.value.diagnostics[0].code == "F723"


@pytest.mark.parametrize("strength", ["nan", "inf", "-inf"])
def test_strength_that_is_not_finite_is_f723(strength):
    """float() reads `nan`: merged, it would turn every weight it touches into NaN."""
    with pytest.raises(DiagnosticError) as err:
        parse_lora_spec(f"a.safetensors:{strength}")
    assert err.value.diagnostics[0].code == "F723"
    assert "not a finite number" in err.value.diagnostics[0].message


def _code(call) -> str:
    with pytest.raises(DiagnosticError) as err:
        call()
    return err.value.diagnostics[0].code


def test_refusals(tiny_sdxl_dir, loras, tmp_path):
    a, _ = loras
    base = tiny_sdxl_dir / "tiny_sdxl.safetensors"
    assert _code(lambda: merge_into_base(base, [LoraSpec(a)], base)) == "F713"
    assert (
        _code(
            lambda: merge_into_base(
                tiny_sdxl_dir / "diffusers", [LoraSpec(a)], tmp_path / "x.safetensors"
            )
        )
        == "F721"
    )
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(a))
    key = next(k for k in tensors if k.endswith("proj_in.lora_down.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0], 640)  # SDXL's width: another model's LoRA
    save_file(tensors, str(tmp_path / "wrong.safetensors"))
    out = tmp_path / "never.safetensors"
    assert (
        _code(lambda: merge_into_base(base, [LoraSpec(tmp_path / "wrong.safetensors")], out))
        == "F722"
    )
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"\x01\x02",
        (10**12).to_bytes(8, "little") + b"{}",
        (5).to_bytes(8, "little") + b"[1, 2",
    ],
    ids=["empty", "short", "header-too-large", "header-not-json"],
)
def test_base_that_is_not_safetensors_is_f703(loras, tmp_path, damage):
    a, _ = loras
    base = tmp_path / "damaged.safetensors"
    base.write_bytes(damage)
    out = tmp_path / "never.safetensors"
    with pytest.raises(DiagnosticError) as err:
        merge_into_base(base, [LoraSpec(a)], out)
    assert err.value.diagnostics[0].code == "F703"
    assert "damaged.safetensors" in err.value.diagnostics[0].message
    assert not out.exists()


def test_cli(tiny_sdxl_dir, loras, tmp_path, capsys):
    a, _ = loras
    out = tmp_path / "cli.safetensors"
    code = main(
        [
            "merge",
            f"{a}:0.7",
            "--base",
            str(tiny_sdxl_dir / "tiny_sdxl.safetensors"),
            "-o",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()
    assert "a.safetensors at strength 0.7" in capsys.readouterr().out
    assert (
        main(
            [
                "merge",
                str(a),
                "--base",
                str(tiny_sdxl_dir / "tiny_sdxl.safetensors"),
                "--rank",
                "2",
                "-o",
                str(out),
            ]
        )
        == 1
    )
    assert "F725" in capsys.readouterr().err


def test_any_layout_merges_the_same(tiny_sdxl_dir, loras, tmp_path):
    """A diffusers/peft-layout copy of the LoRA merges to the same checkpoint, tensor for tensor."""
    from safetensors.torch import load_file

    from lorafile.runtime.lorafiles.convert import convert_file

    a, _ = loras
    convert_file(a, tmp_path / "peft.safetensors", "diffusers")
    base = tiny_sdxl_dir / "tiny_sdxl.safetensors"
    merge_into_base(base, [LoraSpec(a, 0.7)], tmp_path / "k.safetensors")
    merge_into_base(
        base, [LoraSpec(tmp_path / "peft.safetensors", 0.7)], tmp_path / "d.safetensors"
    )
    k, d = load_file(str(tmp_path / "k.safetensors")), load_file(str(tmp_path / "d.safetensors"))
    assert k.keys() == d.keys() and all(torch.equal(k[n], d[n]) for n in k)


def test_streaming_writer_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file

    from lorafile.runtime.lorafiles.stream import Entry, dtype_name, write_streaming

    tensors = {
        "a": torch.randn(3, 5).to(torch.bfloat16),
        "b": torch.tensor(2.5),  # 0-dim (kohya's alpha)
        "c": torch.arange(7, dtype=torch.int64),
        "d": torch.tensor([True, False]),
        "e": torch.randn(2, 3, 1, 1, dtype=torch.float16),
    }
    entries = [Entry(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in tensors.items()]
    write_streaming(tmp_path / "s.safetensors", entries, iter(tensors.items()), {"k": "v"})
    back = load_file(str(tmp_path / "s.safetensors"))
    assert back.keys() == tensors.keys() and all(
        torch.equal(back[k], v) for k, v in tensors.items()
    )
    with pytest.raises(ValueError):
        write_streaming(tmp_path / "bad.safetensors", entries, iter([("a", torch.zeros(3, 5))]), {})
