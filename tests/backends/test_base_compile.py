"""The `base` block compiled to kohya and SimpleTuner and imported back: hub ids, revisions,
weight variants, v-prediction with zero-terminal-SNR."""

from __future__ import annotations

import pytest

from backend_case import BackendCase
from lorafile.spec.models import Base, Dataset, Output, Recipe, Train

NOOB = "Laxhar/noobai-XL-Vpred-1.0"


def recipe(**base) -> Recipe:
    return Recipe(
        name="case",
        base=Base(**({"path": NOOB} | base)),
        datasets=(Dataset(path="/data/set", repeats=10),),
        train=Train(steps=1000),
        output=Output(path="/out/case"),
    )


def codes(diagnostics) -> list[str]:
    return [d.code for d in diagnostics]


class TestKohya(BackendCase):
    backend = "kohya"

    def test_a_hub_id_passes_through_and_reads_back(self):
        r = recipe(vae="madebyollin/sdxl-vae-fp16-fix")
        self.assert_all(
            r,
            write={
                "kohya": {
                    "config.toml": {
                        "pretrained_model_name_or_path": NOOB,
                        "vae": "madebyollin/sdxl-vae-fp16-fix",
                    }
                }
            },
        )
        files, _ = self.write(r)
        assert self.read_files(files)[0].base == r.base

    def test_vpred_zero_snr_flags_round_trip(self):
        r = recipe(prediction="v", zero_terminal_snr=True)
        self.assert_all(
            r,
            write={
                "kohya": {"config.toml": {"v_parameterization": True, "zero_terminal_snr": True}}
            },
        )
        files, _ = self.write(r)
        assert self.read_files(files)[0].base == r.base

    @pytest.mark.parametrize("path", [f"{NOOB}@v1", f"{NOOB}/noob.safetensors"])
    def test_a_revision_or_a_file_in_a_repo_is_t518(self, path):
        _, diagnostics = self.write(recipe(path=path))
        assert "T518" in codes(self.errors(diagnostics))
        files, diagnostics = self.write(recipe(path=path), allow_lossy=True)
        assert f'pretrained_model_name_or_path = "{NOOB}"' in files["config.toml"]

    def test_a_variant_is_information_only(self):
        files, diagnostics = self.write(recipe(variant="fp16"))
        assert "T518" in codes(diagnostics) and not self.errors(diagnostics)
        assert "variant" not in files["config.toml"]


class TestSimpleTuner(BackendCase):
    backend = "simpletuner"
    entry_file = "config.json"

    def test_revision_and_variant_become_options_and_read_back(self):
        r = recipe(path=f"{NOOB}@v1", vae="madebyollin/sdxl-vae-fp16-fix", variant="fp16")
        self.assert_all(
            r,
            write={
                "simpletuner": {
                    "config.json": {
                        "pretrained_model_name_or_path": NOOB,
                        "revision": "v1",
                        "variant": "fp16",
                        "pretrained_vae_model_name_or_path": "madebyollin/sdxl-vae-fp16-fix",
                    }
                }
            },
        )
        files, _ = self.write(r)
        got, _ = self.read_files(files)
        assert got.base == r.base and got.passthrough == {}

    def test_vpred_zero_snr_flags_round_trip(self):
        r = recipe(prediction="v", zero_terminal_snr=True, vae="madebyollin/sdxl-vae-fp16-fix")
        self.assert_all(
            r,
            write={
                "simpletuner": {
                    "config.json": {
                        "prediction_type": "v_prediction",
                        "rescale_betas_zero_snr": True,
                        "training_scheduler_timestep_spacing": "trailing",
                    }
                }
            },
        )
        files, _ = self.write(r)
        got, _ = self.read_files(files)
        assert got.base == r.base and got.passthrough == {}

    def test_a_file_in_a_repo_is_t559(self):
        r = recipe(path=f"{NOOB}/noob.safetensors", vae="madebyollin/sdxl-vae-fp16-fix")
        _, diagnostics = self.write(r)
        assert "T559" in codes(self.errors(diagnostics))
        files, _ = self.write(r, allow_lossy=True)
        assert f'"pretrained_model_name_or_path": "{NOOB}"' in files["config.json"]


def test_simpletuner_samples_a_zero_snr_model_with_cfg_rescale():
    from lorafile.spec.models import Interval, Sample

    case = TestSimpleTuner()
    r = recipe(prediction="v", zero_terminal_snr=True, vae="madebyollin/sdxl-vae-fp16-fix")
    r = r.model_copy(update={"sample": Sample(every=Interval(every=100), prompts=("a fox",))})
    files, _ = case.write(r)
    assert '"validation_guidance_rescale": 0.7' in files["config.json"]
    got, _ = case.read_files(files)
    assert got.passthrough == {} and got.base.zero_terminal_snr
