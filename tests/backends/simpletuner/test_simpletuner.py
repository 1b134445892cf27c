"""SimpleTuner backend: fixtures round-trip, one-line write/read cases, diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend_case import BackendCase
from lorafile.backends.simpletuner import options as opts
from lorafile.backends.simpletuner.load import load_config
from lorafile.backends.simpletuner.read import image_entries, is_regularisation
from lorafile.compiler.diagnostics import DiagnosticBag
from lorafile.spec.models import (
    Adapter,
    Base,
    Buckets,
    Dataset,
    Ema,
    Interval,
    Output,
    Recipe,
    Regularization,
    Resolution,
    Sample,
    Save,
    Train,
    Warmup,
)
from repo_paths import ROOT, TESTS

FIXTURES = TESTS / "fixtures" / "simpletuner"
ALL_FIXTURES = sorted(
    p.name for p in FIXTURES.iterdir() if p.is_dir() and not p.name.startswith("_")
)
# Inputs SimpleTuner itself would not run as written (legacy names, YAML, lokr's huge dim):
# they read with diagnostics, and the rewrite is the corrected config, not the same one.
CORRECTED = {"legacy_keys", "legacy_yaml", "lycoris_lokr_example", "env_export_quotes"}
# Keys whose spelling the writer may change without changing the run.
PATH_KEYS = {"data_backend_config", "lycoris_config", "user_prompt_library"}
# Global dataset defaults the writer moves onto each dataset entry.
DATASET_DEFAULTS = {"instance_prompt", "prepend_instance_prompt", "caption_strategy"}
# Dataset keys at their SimpleTuner default, and the two spellings of the regularisation flag.
ENTRY_DEFAULTS = {"disabled": False, "disable": False}
SPELLINGS = {"is_regularization_data": "is_regularisation_data"}


def recipe(**changes) -> Recipe:
    """A small valid recipe; keyword arguments replace whole sections."""
    data = {
        "name": "case",
        "base": Base(path="/models/sdxl.safetensors"),
        "datasets": (Dataset(path="/data/set", repeats=10),),
        "train": Train(steps=1000),
        "output": Output(path="/out/case"),
    }
    data.update(changes)
    return Recipe(**data)


class TestSimpleTuner(BackendCase):
    backend = "simpletuner"
    entry_file = "config.json"

    def assert_same_effect(self, original: Path, options: dict, written: Path) -> None:
        """Every argument and dataset key the original sets has the same value in the rewrite."""
        if original.name in CORRECTED:
            return
        before = load_config(original, DiagnosticBag())
        after = load_config(written, DiagnosticBag())
        for key, value in before.config.items():
            if key in PATH_KEYS:
                continue
            if key in DATASET_DEFAULTS:
                for entry in _entries(after):
                    if not is_regularisation(entry):
                        assert entry.get(key, after.config.get(key)) == value, key
                continue
            new = after.config.get(key, opts.default(key) if opts.known(key) else None)
            if key == "peft_lora_target_modules":
                value, new = sorted(value), sorted(new)
            assert new == value, f"{key}: {value!r} became {new!r}"
        self._same_entries(before, after)

    def _same_entries(self, before, after) -> None:
        old = _entries(before)
        new = _entries(after)
        assert [is_regularisation(e) for e in old] == [is_regularisation(e) for e in new]
        for a, b in zip(old, new, strict=True):
            for key, value in a.items():
                if key == "caption_strategy" and value == "instance_prompt":
                    value = "instanceprompt"
                if ENTRY_DEFAULTS.get(key, object()) == value:
                    continue
                key = SPELLINGS.get(key, key)
                assert b.get(key) == value, (
                    f"dataset {a.get('id')}: {key} {value!r} -> {b.get(key)!r}"
                )

    # -- every fixture reads, writes and reads back the same ------------------------------------

    @pytest.mark.parametrize("name", ALL_FIXTURES)
    def test_fixture_round_trip(self, name):
        self.assert_identity(FIXTURES / name)

    def test_there_are_enough_fixtures(self):
        assert len(ALL_FIXTURES) >= 20

    # -- writing ----------------------------------------------------------------------------------

    def test_defaults_that_differ_are_written(self):
        self.assert_all(
            recipe(),
            write={
                "simpletuner": {
                    "config.json": {
                        "model_family": "sdxl",
                        "model_type": "lora",
                        "lora_type": "standard",
                        "learning_rate": 1e-4,
                        "lr_scheduler": "constant",
                        "train_batch_size": 1,
                        "report_to": "none",
                        "caption_dropout_probability": 0.0,
                        "lora_dropout": 0.0,
                        "max_grad_norm": 1.0,
                        "grad_clip_method": "norm",
                        "max_train_steps": 1000,
                        "num_train_epochs": 0,
                        "validation_disable": True,
                        "lora_format": "comfyui",
                        "checkpoint_step_interval": 0,
                        "data_backend_config": "multidatabackend.json",
                    }
                }
            },
        )

    def test_canonical_interval_names(self):
        r = recipe(
            save=Save(every=Interval(every=250), keep=3),
            sample=Sample(
                every=Interval(every=100),
                prompts=("a", "b"),
                negative="x",
                size=Resolution(width=832, height=1216),
            ),
        )
        self.assert_all(
            r,
            write={
                "simpletuner": {
                    "config.json": {
                        "checkpoint_step_interval": 250,
                        "checkpoints_total_limit": 3,
                        "validation_step_interval": 100,
                        "validation_prompt": "a",
                        "validation_resolution": "832x1216",
                        "user_prompt_library": "user_prompt_library.json",
                    },
                    "user_prompt_library.json": {"prompt_1": "b"},
                }
            },
        )

    def test_keep_all_is_every_checkpoint_of_the_run(self):
        r = recipe(save=Save(every=Interval(every=250)))
        self.assert_all(r, write={"simpletuner": {"config.json": {"checkpoints_total_limit": 4}}})

    def test_noise_offset_is_always_on(self):
        r = recipe(train=Train(steps=10, noise_offset=0.05, min_snr_gamma=5.0))
        self.assert_all(
            r,
            write={
                "simpletuner": {
                    "config.json": {
                        "offset_noise": True,
                        "noise_offset": 0.05,
                        "noise_offset_probability": 1.0,
                        "snr_gamma": 5,
                    }
                }
            },
        )

    def test_optimizers(self):
        for name, spelled in (
            ("adamw8bit", "bnb-adamw8bit"),
            ("prodigy", "prodigy"),
            ("adafactor", "torch-adafactor"),
            ("lion", "bnb-lion"),
        ):
            r = recipe(train=Train(steps=10, optimizer=name, optimizer_args={"d_coef": 0.5}))
            self.assert_all(
                r,
                write={
                    "simpletuner": {
                        "config.json": {"optimizer": spelled, "optimizer_config": "d_coef=0.5"}
                    }
                },
            )

    def test_epochs_and_polynomial(self):
        r = recipe(train=Train(epochs=4, scheduler="polynomial", warmup=Warmup(value=20)))
        self.assert_all(
            r,
            write={
                "simpletuner": {
                    "config.json": {
                        "num_train_epochs": 4,
                        "max_train_steps": 0,
                        "lr_power": 1.0,
                        "lr_warmup_steps": 20,
                    }
                }
            },
        )

    def test_warmup_percent_becomes_steps(self):
        r = recipe(train=Train(steps=2000, warmup=Warmup(value=5, unit="percent")))
        self.assert_all(r, write={"simpletuner": {"config.json": {"lr_warmup_steps": 100}}})

    def test_dataset_entry(self):
        r = recipe(
            datasets=(Dataset(path="/data/My Set", repeats=10, captions="txt"),), trigger="ohwx"
        )
        files, _ = self.write(r)
        entry = json.loads(files["multidatabackend.json"])[0]
        assert entry == {
            "id": "my-set",
            "type": "local",
            "dataset_type": "image",
            "instance_data_dir": "/data/My Set",
            "caption_strategy": "textfile",
            "instance_prompt": "ohwx",
            "prepend_instance_prompt": True,
            "repeats": 9,
            "resolution": 1024,
            "resolution_type": "pixel_area",
            "crop": False,
            "minimum_aspect_ratio": 0.125,
            "maximum_aspect_ratio": 8.0,
            "cache_dir_vae": "cache/vae/my-set",
        }

    def test_no_buckets_is_a_square_crop(self):
        r = recipe(datasets=(Dataset(path="/d", buckets=Buckets(enabled=False)),))
        entry = json.loads(self.write(r)[0]["multidatabackend.json"])[0]
        assert (entry["crop"], entry["crop_aspect"], entry["crop_style"]) == (
            True,
            "square",
            "center",
        )

    def test_trigger_only_captions_use_instanceprompt(self):
        r = recipe(datasets=(Dataset(path="/d", captions="trigger"),), trigger="zwx")
        entry = json.loads(self.write(r)[0]["multidatabackend.json"])[0]
        assert (entry["caption_strategy"], entry["instance_prompt"]) == ("instanceprompt", "zwx")

    def test_regularization_entry_and_one_text_embeds(self):
        r = recipe(regularization=(Regularization(path="/reg/dogs", class_prompt="a dog"),))
        files, diagnostics = self.write(r)
        entries = json.loads(files["multidatabackend.json"])
        reg = entries[1]
        assert reg["is_regularisation_data"] is True
        assert (reg["caption_strategy"], reg["instance_prompt"], reg["repeats"]) == (
            "instanceprompt",
            "a dog",
            0,
        )
        assert [e["dataset_type"] for e in entries].count("text_embeds") == 1
        assert any(d.code == "T530" for d in diagnostics)  # parent-teacher, not prior loss

    def test_lycoris_config_beside_the_config(self):
        r = recipe(adapter=Adapter(algo="locon", rank=16, alpha=8, conv_rank=8, conv_alpha=4))
        self.assert_all(
            r,
            write={
                "simpletuner": {
                    "config.json": {
                        "lora_type": "lycoris",
                        "lycoris_config": "lycoris_config.json",
                    },
                    "lycoris_config.json": {
                        "algo": "locon",
                        "multiplier": 1.0,
                        "linear_dim": 16,
                        "linear_alpha": 8,
                        "conv_dim": 8,
                        "conv_alpha": 4,
                    },
                }
            },
        )
        files, _ = self.write(r)
        preset = json.loads(files["lycoris_config.json"])["apply_preset"]["target_module"]
        assert preset == ["Attention", "FeedForward", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
        assert "lora_rank" not in json.loads(files["config.json"])

    def test_toml_format(self):
        from lorafile.backends.base import get

        backend = get("simpletuner")
        backend.options["format"] = "toml"
        files = backend.write(recipe(), DiagnosticBag()).files
        assert "config.toml" in files and "config.json" not in files
        back, _ = self.read_files(files)  # config.json is absent: the folder's config is read
        assert back == get("simpletuner").project(recipe())

    def test_train_sh_runs_simpletuner_from_its_folder(self):
        r = recipe(hardware={"gpus": 2})
        files, _ = self.write(r)
        script = files["train.sh"]
        assert 'cd "$(dirname "$0")"' in script and "simpletuner train" in script
        assert "TRAINING_NUM_PROCESSES=2" in script

    def test_diffusers_layout(self):
        r = recipe(save=Save(layout="diffusers"))
        self.assert_all(r, write={"simpletuner": {"config.json": {"lora_format": "diffusers"}}})

    # -- what SimpleTuner cannot express ----------------------------------------------------------

    @pytest.mark.parametrize(
        ("changes", "code"),
        [
            ({"base": Base(path="/m", clip_skip=2)}, "T520"),
            ({"datasets": (Dataset(path="/d", captions="caption"),)}, "T522"),
            (
                {"datasets": (Dataset(path="/d", resolution=Resolution(width=832, height=1216)),)},
                "T523",
            ),
            ({"datasets": (Dataset(path="/d", buckets=Buckets(step=32)),)}, "T524"),
            ({"datasets": (Dataset(path="/d", buckets=Buckets(upscale=False)),)}, "T525"),
            ({"datasets": (Dataset(path="/d", flip=True),)}, "T526"),
            ({"datasets": (Dataset(path="/d", color_aug=True),)}, "T527"),
            ({"datasets": (Dataset(path="/a"), Dataset(path="/b", caption_dropout=0.1))}, "T529"),
            (
                {"regularization": (Regularization(path="/r", class_prompt="c", weight=0.5),)},
                "T531",
            ),
            ({"adapter": Adapter(algo="loha", rank=8, alpha=0.5)}, "T533"),
            ({"adapter": Adapter(algo="locon", text_encoder=True)}, "T534"),
            ({"train": Train(steps=10, optimizer_args={"betas": "0.9,0.99"})}, "T537"),
            ({"train": Train(steps=10, base_precision="fp16")}, "T538"),
            ({"train": Train(steps=10, min_snr_gamma=4.5)}, "T540"),
            ({"train": Train(epochs=3, warmup=Warmup(value=5, unit="percent"))}, "T536"),
            ({"sample": Sample(every=Interval(every=5), prompts=("x",), sampler="heun")}, "T543"),
            ({"hardware": {"machines": 2}}, "T545"),
            ({"passthrough": {"simpletuner": {"not_an_option": 1}}}, "T547"),
            ({"passthrough": {"simpletuner": {"learning_rate": 1.0}}}, "T547"),
        ],
    )
    def test_losses_are_errors_unless_lossy(self, changes, code):
        r = recipe(**changes)
        _, strict = self.write(r)
        assert code in {d.code for d in self.errors(strict)}, [str(d) for d in strict]
        _, lossy = self.write(r, allow_lossy=True)
        assert not self.errors(lossy)
        assert code in {d.code for d in lossy}

    @pytest.mark.parametrize(
        ("changes", "code"),
        [
            ({}, "T521"),  # SimpleTuner's default VAE replaces the base model's own
            # latents and text embeddings are always cached, whatever the recipe says
            ({"train": Train(steps=100, cache={"latents": False, "text": False})}, "T539"),
            ({"regularization": (Regularization(path="/r", class_prompt="c"),)}, "T530"),
            ({"regularization": (Regularization(path="/r", class_prompt="c", ratio=2),)}, "T532"),
            ({"datasets": (Dataset(path="/d", shuffle_captions=True, keep_tokens=1),)}, "T528"),
            ({"sample": Sample(every=Interval(every=5), prompts=("x",))}, "T544"),
            ({"adapter": Adapter(algo="locon")}, "T541"),
            ({"output": Output(path="/o", name="file")}, "T548"),
        ],
    )
    def test_changes_of_meaning_are_warnings(self, changes, code):
        _, diagnostics = self.write(recipe(**changes))
        assert code in {d.code for d in diagnostics}
        assert not self.errors(diagnostics)

    # -- reading ----------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("name", "check"),
        [
            ("json_dashed_keys", lambda r: (r.adapter.rank, r.train.lr) == (16, 1e-4)),
            ("json_plain_keys", lambda r: r.datasets[0].repeats == 5),
            ("toml_standard", lambda r: (r.train.scheduler, r.train.seed) == ("cosine", 42)),
            (
                "env_trainer_extra_args",
                lambda r: (
                    (r.adapter.rank, r.train.min_snr_gamma, r.train.noise_offset) == (32, 5.0, 0.05)
                ),
            ),
            ("env_trainer_extra_args", lambda r: (r.hardware.gpus, r.trigger) == (2, "ohwx")),
            (
                "env_export_quotes",
                lambda r: (
                    (r.train.optimizer, r.train.optimizer_args)
                    == ("prodigy", {"d_coef": 0.5, "use_bias_correction": True})
                ),
            ),
            (
                "env_export_quotes",
                lambda r: (
                    (r.train.checkpointing, r.log.to, r.sample) == (False, "tensorboard", None)
                ),
            ),
            (
                "lycoris_locon_conv",
                lambda r: (
                    (r.adapter.algo, r.adapter.conv_rank, r.adapter.targets)
                    == ("locon", 8, ("attention", "ff", "conv"))
                ),
            ),
            ("lycoris_loha_toml", lambda r: (r.adapter.algo, r.adapter.dropout) == ("loha", 0.05)),
            (
                "regularisation_subject",
                lambda r: r.regularization[0].class_prompt == "a photo of a dog",
            ),
            (
                "regularization_us_spelling",
                lambda r: [g.ratio for g in r.regularization] == [0.5, 1.0],
            ),
            (
                "several_datasets",
                lambda r: [d.buckets.enabled for d in r.datasets] == [True, False, False],
            ),
            ("several_datasets", lambda r: r.datasets[1].resolution.width == 768),
            (
                "instanceprompt_captions",
                lambda r: (r.datasets[0].captions, r.trigger) == ("trigger", "zwx toy"),
            ),
            (
                "filename_captions",
                lambda r: (
                    (r.datasets[0].captions, r.trigger, r.datasets[0].caption_dropout)
                    == ("filename", "mystyle", 0.05)
                ),
            ),
            (
                "epochs_schedule",
                lambda r: (
                    (r.train.epochs, r.save.every, r.save.keep)
                    == (12, Interval(every=2, unit="epochs"), 3)
                ),
            ),
            (
                "prompt_library",
                lambda r: (
                    r.sample.prompts
                    == ("a photo of a lighthouse", "a dog on a beach", "a dog in a city")
                ),
            ),
            (
                "vpred_polynomial",
                lambda r: (
                    (r.base.prediction, r.train.power, r.train.base_precision) == ("v", 2.0, "fp32")
                ),
            ),
            (
                "caption_shuffle",
                lambda r: (r.datasets[0].shuffle_captions, r.datasets[0].keep_tokens) == (True, 1),
            ),
            (
                "text_encoder_targets",
                lambda r: (
                    (r.adapter.text_encoder, r.adapter.targets, r.save.layout)
                    == (True, ("attention", "ff"), "kohya")
                ),
            ),
            (
                "aspect_limits",
                lambda r: (r.datasets[0].buckets.min, r.datasets[0].buckets.max) == (724, 1448),
            ),
            ("passthrough_extras", lambda r: r.ema == Ema(decay=0.999)),
            ("passthrough_extras", lambda r: "use_ema" not in r.passthrough["simpletuner"]),
            (
                "json_plain_keys",
                lambda r: (r.adapter.targets, r.adapter.dropout) == (("attention",), 0.1),
            ),
            ("json_plain_keys", lambda r: r.base.vae == "madebyollin/sdxl-vae-fp16-fix"),
        ],
    )
    def test_reads(self, name, check):
        got, _ = self.read(FIXTURES / name)
        assert check(got), got

    @pytest.mark.parametrize(
        ("name", "codes"),
        [
            ("legacy_yaml", {"I630", "I631", "I632", "I633", "I634", "I653"}),
            ("legacy_keys", {"I632", "I633", "I641"}),
            ("env_placeholders", {"I635"}),
            ("lycoris_lokr_example", {"I643"}),
            ("env_export_quotes", {"I636"}),
        ],
    )
    def test_read_diagnostics(self, name, codes):
        _, diagnostics = self.read(FIXTURES / name)
        assert codes <= {d.code for d in diagnostics}, [str(d) for d in diagnostics]

    def test_offset_noise_probability_is_read_into_the_recipe(self):
        # SimpleTuner's default noise_offset_probability is 0.25: offset noise on a quarter
        # of the steps, which the recipe now says itself (no passthrough, no I645).
        got, diagnostics = self.read(FIXTURES / "noise_offset_partial")
        assert (got.train.noise_offset, got.train.noise_offset_probability) == (0.1, 0.25)
        assert "I645" not in {d.code for d in diagnostics}
        assert "noise_offset_probability" not in got.passthrough.get("simpletuner", {})

    def test_legacy_yaml_best_reading(self):
        got, _ = self.read(FIXTURES / "legacy_yaml" / "config.yaml")
        assert (got.train.optimizer, got.train.steps, got.train.accumulate) == (
            "adamw8bit",
            3000,
            4,
        )
        assert (got.adapter.rank, got.adapter.effective_alpha, got.log.to) == (
            16,
            16.0,
            "tensorboard",
        )

    def test_lokr_keeps_its_settings_for_simpletuner(self):
        got, _ = self.read(FIXTURES / "lycoris_lokr_example")
        kept = got.passthrough["simpletuner"]
        # linear_dim 10000 is "full matrices"; rank 1024 is full on every SDXL layer at factor 12.
        assert (got.adapter.algo, got.adapter.factor, got.adapter.rank) == ("lokr", 12, 1024)
        assert kept["lycoris.bypass_mode"] is True and "lycoris.algo" not in kept
        files, _ = self.write(got)
        written = json.loads(files["lycoris_config.json"])
        assert (written["algo"], written["factor"], written["bypass_mode"]) == ("lokr", 12, True)

    def test_model_family_must_be_sdxl(self, tmp_path):
        (tmp_path / "config.json").write_text(json.dumps({"model_family": "flux"}))
        _, diagnostics = self.read(tmp_path)
        assert "I637" in {d.code for d in self.errors(diagnostics)}

    def test_string_false_is_dropped(self, tmp_path):
        config = {"model_family": "sdxl", "model_type": "lora", "gradient_checkpointing": "false"}
        (tmp_path / "config.json").write_text(json.dumps(config))
        got, diagnostics = self.read(tmp_path)
        assert got.train.checkpointing is True  # SimpleTuner's default applies
        assert "I642" in {d.code for d in diagnostics}

    def test_unknown_key_is_reported(self, tmp_path):
        config = {"model_family": "sdxl", "model_type": "lora", "lora_rnak": 8}
        (tmp_path / "config.json").write_text(json.dumps(config))
        _, diagnostics = self.read(tmp_path)
        unknown = [d for d in diagnostics if d.code == "I636"]
        assert unknown and "lora_rank" in unknown[0].message


def _entries(loaded) -> list[dict]:
    reference = loaded.config.get("data_backend_config")
    if reference is None:
        return []
    from lorafile.backends.simpletuner.load import resolve

    data = json.loads(resolve(str(reference), loaded.folder).read_text())
    images = image_entries(data)
    return [e for e in images if not is_regularisation(e)] + [
        e for e in images if is_regularisation(e)
    ]


def test_every_code_is_documented():
    """docs/diagnostics.md has a section for each T52x-T54x / I63x-I65x code the code raises."""
    import re

    root = ROOT
    sources = [*root.glob("src/lorafile/backends/simpletuner/*.py"),
               root / "src/lorafile/backends/migrate.py"]  # fmt: skip
    used = set()
    for source in sources:
        used |= set(re.findall(r'"((?:T5[2-4]|I6[3-5])\d)"', source.read_text()))
    documented = set(
        re.findall(r"^### ([TI]\d{3}):", (root / "docs/diagnostics.md").read_text(), re.M)
    )
    assert len(used) > 40
    assert used <= documented, sorted(used - documented)


def test_placeholders_in_config_and_datasets_are_reported():
    bag = DiagnosticBag()
    from lorafile.backends.base import get

    got = get("simpletuner").read(FIXTURES / "env_placeholders", bag)
    messages = [d.message for d in bag if d.code == "I635"]
    assert any("OUT_ROOT" in m for m in messages) and any("DATA_ROOT" in m for m in messages)
    assert got.datasets[0].path == "{env:DATA_ROOT}/photos"  # kept as written


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_imported_recipe_text_parses_back(name):
    """`lorafile import` prints a recipe; parsing that text gives the same recipe."""
    from lorafile.backends.base import get
    from lorafile.compiler.format import format_recipe
    from lorafile.compiler.parse import parse_recipe

    got = get("simpletuner").read(FIXTURES / name, DiagnosticBag())
    assert parse_recipe(format_recipe(got)) == got


@pytest.mark.parametrize(
    ("files", "code"),
    [
        ({"config.json": '{"model_family": "sdxl", "data_backend_config": "m.json"}',
          "m.json": '[{"id": "a", "instance_data_dir": "/x", "repeats": "lots"}]'}, "I652"),
        ({"config.yaml": "a: [b\n"}, "I651"),
        ({"config.json": "{not json"}, "I651"),
        ({"config.json": '{"model_family": "sdxl", "max_train_steps": Infinity}'}, "I652"),
        ({"config.json": '{"model_family": "sdxl", "data_backend_config": "m.json"}',
          "m.json": '[{"id": "a", "instance_data_dir": "/x", "resolution": Infinity}]'}, "I652"),
    ],
)  # fmt: skip
def test_malformed_input_is_a_diagnostic(tmp_path, files, code):
    from lorafile.backends.base import get
    from lorafile.compiler.diagnostics import DiagnosticError

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DiagnosticError) as err:
        get("simpletuner").read(tmp_path, DiagnosticBag())
    assert code in {d.code for d in err.value.diagnostics}
