"""Loss, noise and timestep options compiled to kohya and SimpleTuner, and read back."""

from __future__ import annotations

import json

from backend_case import BackendCase
from lorafile.backends.base import get
from lorafile.spec.models import Base, Dataset, Output, Recipe, TimestepBias, Train

VAE = "madebyollin/sdxl-vae-fp16-fix"


def recipe(**train) -> Recipe:
    return Recipe(
        name="case",
        base=Base(path="/models/sdxl.safetensors", vae=VAE),
        datasets=(Dataset(path="/data/set", repeats=10),),
        train=Train(steps=1000, **train),
        output=Output(path="/out/case"),
    )


def codes(diagnostics, errors_only=True) -> set[str]:
    return {d.code for d in diagnostics if d.is_error or not errors_only}


COMMON = dict(loss="huber", huber_schedule="exponential", huber_c=0.2, ip_noise_gamma=0.1)
KOHYA_ONLY = dict(
    debiased_estimation=True,
    multires_noise_iterations=6,
    multires_noise_discount=0.4,
    min_timestep=100,
    max_timestep=900,
)
SIMPLETUNER_ONLY = dict(
    noise_offset=0.05,
    noise_offset_probability=0.5,
    timestep_bias=TimestepBias(strategy="later", multiplier=2.0, portion=0.3),
)


class TestKohya(BackendCase):
    backend = "kohya"

    def test_every_option_it_has_is_written_and_read_back(self):
        r = recipe(**COMMON, **KOHYA_ONLY)
        self.assert_all(
            r,
            write={
                "kohya": {
                    "config.toml": {
                        "loss_type": "huber",
                        "huber_schedule": "exponential",
                        "huber_c": 0.2,
                        "ip_noise_gamma": 0.1,
                        "debiased_estimation_loss": True,
                        "multires_noise_iterations": 6,
                        "multires_noise_discount": 0.4,
                        "min_timestep": 100,
                        "max_timestep": 900,
                    }
                }
            },
        )
        files, _ = self.write(r)
        got, _ = self.read_files(files)
        # `checkpointing auto` / `cache auto` are resolved for kohya (T583): compare with that.
        assert got.train == get(self.backend).project(r).train and got.passthrough == {}

    def test_offset_probability_and_timestep_bias_are_t580(self):
        _, diagnostics = self.write(recipe(**SIMPLETUNER_ONLY))
        assert codes(diagnostics) == {"T580"}
        files, _ = self.write(recipe(**SIMPLETUNER_ONLY), allow_lossy=True)
        text = files["config.toml"]
        assert "timestep_bias" not in text and "noise_offset = 0.05" in text


class TestSimpleTuner(BackendCase):
    backend = "simpletuner"
    entry_file = "config.json"

    def test_every_option_it_has_is_written_and_read_back(self):
        r = recipe(**COMMON, **SIMPLETUNER_ONLY)
        self.assert_all(
            r,
            write={
                "simpletuner": {
                    "config.json": {
                        "loss_type": "huber",
                        "huber_schedule": "exponential",
                        "huber_c": 0.2,
                        "input_perturbation": 0.1,
                        "offset_noise": True,
                        "noise_offset": 0.05,
                        "noise_offset_probability": 0.5,
                        "timestep_bias_strategy": "later",
                        "timestep_bias_multiplier": 2.0,
                        "timestep_bias_portion": 0.3,
                    }
                }
            },
        )
        files, _ = self.write(r)
        got, _ = self.read_files(files)
        assert got.train.model_dump() == r.train.model_dump() | {
            "checkpointing": get(self.backend).project(r).train.checkpointing,  # auto: T584
            "cache": got.train.cache.model_dump(),  # SimpleTuner always caches (T539)
            "max_grad_norm": got.train.max_grad_norm,
        }
        assert got.passthrough == {}

    def test_a_range_bias_round_trips(self):
        r = recipe(timestep_bias=TimestepBias(strategy="range", begin=200, end=500, multiplier=3))
        files, _ = self.write(r)
        config = json.loads(files["config.json"])
        assert (config["timestep_bias_begin"], config["timestep_bias_end"]) == (200, 500)
        got, _ = self.read_files(files)
        assert got.train.timestep_bias == r.train.timestep_bias

    def test_debiased_multires_and_a_timestep_range_are_t581(self):
        _, diagnostics = self.write(recipe(**KOHYA_ONLY))
        assert codes(diagnostics) == {"T581"}
        files, diagnostics = self.write(recipe(**KOHYA_ONLY), allow_lossy=True)
        assert len([d for d in diagnostics if d.code == "T581"]) == 3
        assert "debiased" not in files["config.json"] and "multires" not in files["config.json"]
