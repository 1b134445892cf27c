"""LoKr, DoRA and EMA compiled to kohya and SimpleTuner (issue 18): the files say it in each
trainer's spelling, LyCORIS' own network builders accept them on the tiny model, every emitted
key passes the trainers' option tables, and both readers give the projected recipe back."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from backend_case import BackendCase
from kohya_args import check_argparse_types
from lorafile.backends.base import get
from lorafile.backends.simpletuner import options as st_opts
from lorafile.compiler.parse import parse_recipe
from lorafile.runtime.lorafiles.keys import KeyMap
from lorafile.runtime.models.tiny import build_tiny_sdxl
from lorafile.spec.models import Adapter, Ema

RECIPES = Path(__file__).parent.parent / "fixtures" / "recipes"


def _recipe(name: str, **changes):
    recipe = parse_recipe((RECIPES / f"{name}.recipe").read_text(encoding="utf-8"))
    return recipe.model_copy(update=changes)


def _kohya_args(files: dict) -> dict:
    doc = tomllib.loads(files["config.toml"])
    flat = {k: v for sec in doc.values() if isinstance(sec, dict) for k, v in sec.items()}
    check_argparse_types(doc)
    return flat


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_sdxl(seed=0)


def _lycoris_network(flat: dict, tiny):
    """The network sd-scripts builds from the config's network_dim, network_alpha and
    network_args with `--network_module lycoris.kohya`, on the tiny model."""
    from lycoris.kohya import create_network

    kwargs = dict(arg.split("=", 1) for arg in flat["network_args"])
    return create_network(
        1.0,
        flat["network_dim"],
        flat["network_alpha"],
        tiny.vae,
        [tiny.text_encoder, tiny.text_encoder_2],
        tiny.unet,
        **kwargs,
    )


def _assert_covers_native(net, tiny, targets) -> None:
    """LyCORIS adapts every module the native trainer adapts (its attn-mlp preset on a diffusers
    UNet also takes the time/added-condition embedding Linears, which kohya's own UNet names
    differently; not a LoKr/DoRA matter)."""
    keymap = KeyMap.from_models({"unet": tiny.unet})
    native = {keymap.kohya("unet", m.path, sgm=False) for m in keymap.select(targets)}
    names = {m.lora_name for m in net.unet_loras}
    assert native <= names
    assert all("_embedding_" in n for n in names - native)


class TestKohya(BackendCase):
    backend = "kohya"

    def test_lokr_network_args_build_lycoris_lokr(self, tiny):
        from lycoris.modules.lokr import LokrModule

        recipe = _recipe("adapter_lokr_ema", ema=None).model_copy(
            update={
                "adapter": Adapter(
                    algo="lokr", rank=8, alpha=4, factor=4, targets=("attention", "ff")
                )
            }
        )
        files, diagnostics = self.write(recipe)
        assert not self.errors(diagnostics)
        flat = _kohya_args(files)
        assert flat["network_module"] == "lycoris.kohya"
        assert flat["network_args"] == ["algo=lokr", "preset=attn-mlp", "factor=4"]
        net = _lycoris_network(flat, tiny)
        assert {type(m) for m in net.unet_loras} == {LokrModule}
        assert {m.lokr_w1.shape[0] for m in net.unet_loras} <= {1, 2, 4}  # factor 4 bounds w1
        _assert_covers_native(net, tiny, ("attention", "ff"))
        back, _ = self.read_files(files)
        assert back == get("kohya").project(recipe) and back.adapter.factor == 4

    def test_dora_is_lycoris_dora_wd(self, tiny):
        recipe = _recipe("adapter_dora", ema=None)
        files, _ = self.write(recipe)
        flat = _kohya_args(files)
        assert flat["network_module"] == "lycoris.kohya"
        assert flat["network_args"] == ["algo=locon", "preset=attn-mlp", "dora_wd=True"]
        net = _lycoris_network(flat, tiny)
        assert all(m.wd and m.wd_on_out for m in net.unet_loras)  # a magnitude per output row
        _assert_covers_native(net, tiny, ("attention", "ff"))
        back, _ = self.read_files(files)
        a = back.adapter
        assert (a.algo, a.rank, a.targets, a.dora) == ("locon", 8, ("attention", "ff"), True)
        assert back == get("kohya").project(recipe)

    def test_ema_is_t582(self):
        recipe = _recipe("adapter_lokr_ema")
        _, diagnostics = self.write(recipe)
        assert [(d.code, d.is_error) for d in _not_auto(diagnostics)] == [("T582", True)]
        files, diagnostics = self.write(recipe, allow_lossy=True)
        assert [d.code for d in _not_auto(diagnostics)] == ["T582"]
        assert not [k for k in _kohya_args(files) if "ema" in k]
        assert get("kohya").project(recipe).ema is None

    def test_lokr_dropout_is_t510(self):
        recipe = _recipe("adapter_lokr_ema", ema=None).model_copy(
            update={"adapter": Adapter(algo="lokr", dropout=0.1)}
        )
        _, diagnostics = self.write(recipe, allow_lossy=True)
        diagnostics = _not_auto(diagnostics)
        assert [d.code for d in diagnostics] == ["T510"] and "LoKr" in diagnostics[0].message


class TestSimpleTuner(BackendCase):
    backend = "simpletuner"
    entry_file = "config.json"

    def test_lokr_lycoris_config_builds_lycoris(self, tiny):
        from lycoris import create_lycoris
        from lycoris.modules.lokr import LokrModule

        recipe = _recipe("adapter_lokr_ema")
        files, diagnostics = self.write(recipe)
        assert not self.errors(diagnostics)
        config = json.loads(files["config.json"])
        assert all(st_opts.check(k, v) is None for k, v in config.items())
        assert (config["use_ema"], config["ema_decay"]) == (True, 0.999)
        lycoris = json.loads(files["lycoris_config.json"])
        assert (lycoris["algo"], lycoris["factor"], lycoris["linear_dim"]) == ("lokr", 12, 1024)
        # What SimpleTuner does with the file (helpers/models/common.py): preset, then create.
        options = {k: v for k, v in lycoris.items() if k != "apply_preset"}
        from lycoris import LycorisNetwork

        LycorisNetwork.apply_preset(lycoris["apply_preset"])
        algo, dim, alpha = (
            options.pop("algo"),
            options.pop("linear_dim"),
            options.pop("linear_alpha"),
        )
        net = create_lycoris(tiny.unet, options.pop("multiplier"), dim, alpha, algo=algo, **options)
        assert net.loras and {type(m) for m in net.loras} == {LokrModule}
        back, _ = self.read_files(files)
        assert back == get("simpletuner").project(recipe)
        assert (back.adapter.algo, back.adapter.factor, back.ema) == ("lokr", 12, Ema(decay=0.999))

    def test_dora_is_use_dora(self):
        recipe = _recipe("adapter_dora")
        files, _ = self.write(recipe)
        config = json.loads(files["config.json"])
        assert all(st_opts.check(k, v) is None for k, v in config.items())
        assert (config["lora_type"], config["use_dora"], config["ema_decay"]) == (
            "standard",
            True,
            0.995,
        )
        back, _ = self.read_files(files)
        assert back == get("simpletuner").project(recipe) and back.adapter.dora

    def test_locon_dora_is_lycoris_dora_wd(self):
        recipe = _recipe("adapter_dora", ema=None).model_copy(
            update={"adapter": Adapter(algo="locon", rank=8, dora=True)}
        )
        files, _ = self.write(recipe)
        assert json.loads(files["lycoris_config.json"])["dora_wd"] is True
        back, _ = self.read_files(files)
        assert back.adapter.dora and back == get("simpletuner").project(recipe)


def _not_auto(diagnostics):
    """Without the information lines that say how `auto` memory measures were chosen."""
    return [d for d in diagnostics if d.code not in ("T583", "T584")]
