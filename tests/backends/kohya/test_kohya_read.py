"""Reading kohya configs: what each key becomes, and a diagnostic at file:line for each trap."""

from __future__ import annotations

import pytest

from backend_case import BackendCase
from lorafile.spec.models import (
    Adapter,
    Base,
    Buckets,
    Dataset,
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
from repo_paths import TESTS

FIXTURES = TESTS / "fixtures" / "kohya"
BROKEN = FIXTURES / "broken"
SEED = FIXTURES / "01_seed_style_lora.toml"


def codes_at(diagnostics, code: str) -> list[int | None]:
    return [d.line for d in diagnostics if d.code == code]


class TestKohyaRead(BackendCase):
    backend = "kohya"

    def test_seed_batch_size_is_ignored_by_kohya(self):
        recipe, diags = self.read(SEED)
        trap = next(d for d in diags if d.code == "I601")
        assert trap.line == 12 and "batch size 1" in trap.message
        assert "train_batch_size" in trap.message and trap.severity == "warning"
        assert recipe.train.batch == 1  # what sd-scripts actually trains with

    def test_seed_maps_its_settings(self):
        recipe, _ = self.read(SEED)
        assert recipe.base.path == "/models/sdxl-2.0-base.safetensors"
        assert recipe.train.steps == 3000 and recipe.train.lr == 1e-4
        assert recipe.train.scheduler == "cosine" and recipe.train.warmup == Warmup(value=100)
        assert recipe.adapter.rank == 16 and recipe.adapter.alpha == 16.0
        assert recipe.adapter.text_encoder  # no network_train_unet_only: kohya trains the TEs
        assert recipe.datasets[0].captions == "txt"
        assert recipe.datasets[0].buckets.max == 1024  # kohya's default, not the recipe's
        assert recipe.save.every == Interval(every=500) and recipe.save.precision == "fp32"
        assert recipe.passthrough["kohya"]["sample_prompts"] == "/data/sample_prompts.txt"

    def test_seed_missing_folder_is_reported(self):
        _, diags = self.read(SEED)
        assert codes_at(diags, "I611") == [10]

    def test_type_errors_point_at_their_lines(self):
        recipe, diags = self.read(BROKEN / "types.toml")
        assert sorted(codes_at(diags, "I604")) == [6, 10, 15, 18, 19]
        assert codes_at(diags, "I607") == [16]
        assert codes_at(diags, "I605") == [12]
        assert all(d.is_error for d in diags if d.code in ("I604", "I605", "I607"))
        assert recipe.train.lr == 1e-4  # the quoted number, as the user meant it
        assert recipe.train.scheduler == "constant_with_warmup"
        assert recipe.train.optimizer_args == {"weight_decay": 0.01}

    def test_nested_tables_and_unknown_keys(self):
        _, diags = self.read(BROKEN / "nested.toml")
        assert codes_at(diags, "I602") == [7, 8]
        assert codes_at(diags, "I603") == [15]
        unknown = {d.line: d.message for d in diags if d.code == "I601"}
        assert sorted(unknown) == [16, 17, 18, 19, 20]
        assert "`network_alpha`" in unknown[20]  # did you mean, for a plain typo
        assert "`lr_scheduler_power`" in unknown[17]

    def test_sd_scripts_assertions(self):
        _, diags = self.read(BROKEN / "cache_te_shuffle.toml")
        assert len(codes_at(diags, "I606")) == 2
        assert codes_at(diags, "I628") == [11]
        assert codes_at(diags, "I629") == [12]
        assert codes_at(diags, "I627") == [9]

    def test_dataset_config_is_strict(self):
        _, diags = self.read(BROKEN / "bad_dataset.toml")
        bad = [d for d in diags if d.code == "I609"]
        assert [d.line for d in bad] == [3, 6, 11, 12]
        assert all(d.file.endswith("bad_dataset.dataset.toml") for d in bad)
        assert "caption_extension" in bad[3].help  # did you mean

    @pytest.mark.parametrize(
        ("dataset", "says"),
        [
            ("datasets = 3\n", "`datasets = 3` must be a list of tables"),
            ("datasets = [3]\n", "`datasets = [3]` must be a list of tables"),
            ("[[datasets]]\nsubsets = 3\n", "`subsets = 3` must be a list of tables"),
            ("general = 3\n", "`general = 3` must be a table"),
            (
                "[[datasets]]\nresolution = [1, 2]\nbatch_size = [1, 2]\n"
                "[[datasets.subsets]]\nimage_dir = 'x'\nnum_repeats = 'ten'\n",
                '`num_repeats = "ten"` must be int',
            ),
        ],
    )
    def test_dataset_config_of_the_wrong_shape_is_i609_not_a_traceback(self, dataset, says):
        config = "learning_rate = 1e-4\ndataset_config = 'd.toml'\n"
        _, diags = self.read_files({"config.toml": config, "d.toml": dataset})
        assert any(d.code == "I609" and says in d.message for d in diags), diags

    def test_unusable_dataset_resolution_is_i623_not_a_traceback(self):
        config = "learning_rate = 1e-4\ndataset_config = 'd.toml'\n"
        dataset = "[[datasets]]\nresolution = -1\n[[datasets.subsets]]\nimage_dir = 'x'\n"
        _, diags = self.read_files({"config.toml": config, "d.toml": dataset})
        assert any(d.code == "I623" and "(-1)" in d.message for d in diags), diags

    def test_sample_prompts_file_that_is_not_utf8_is_i618(self, tmp_path):
        (tmp_path / "config.toml").write_text(
            "learning_rate = 1e-4\nsample_every_n_steps = 10\nsample_prompts = 'p.txt'\n"
        )
        (tmp_path / "p.txt").write_bytes(b"\xc0\x01 a prompt")
        _, diags = self.read(tmp_path / "config.toml")
        assert any(d.code == "I618" and "not UTF-8 text" in d.message for d in diags), diags

    def test_prompt_file_problems(self):
        recipe, diags = self.read(BROKEN / "sample_bad.toml")
        assert [
            (d.line, d.file.endswith("prompts_bad.txt")) for d in diags if d.code == "I619"
        ] == [(1, True), (1, True), (2, True)]
        assert codes_at(diags, "I621")
        assert recipe.sample.size == Resolution(width=512, height=1024)  # `--w=` is ignored

    def test_folder_convention(self):
        recipe, _ = self.read(FIXTURES / "19_folder_convention.toml")
        assert [d.path for d in recipe.datasets] == ["folders/person/10_ohwx woman"]
        assert recipe.datasets[0].repeats == 10
        assert recipe.passthrough["kohya"]["datasets.0.class_tokens"] == "ohwx woman"
        assert recipe.regularization == (
            Regularization(path="folders/reg/1_woman", class_prompt="woman", weight=0.8),
        )

    def test_lycoris_locon(self):
        recipe, _ = self.read(FIXTURES / "04_lycoris_locon.toml")
        assert recipe.adapter == Adapter(
            algo="locon",
            rank=16,
            alpha=8.0,
            conv_rank=8,
            conv_alpha=4.0,
            targets=("attention", "ff", "conv"),
        )
        assert recipe.train.warmup == Warmup(value=5, unit="percent")
        assert recipe.train.cycles == 3 and recipe.train.epochs == 10

    def test_lycoris_defaults_conv_to_network_dim(self):
        recipe, _ = self.read(FIXTURES / "20_lycoris_example_sections.toml")
        assert recipe.adapter.algo == "loha" and "conv" in recipe.adapter.targets
        assert recipe.adapter.conv_rank == 4 and recipe.adapter.conv_alpha == 1.0

    def test_unrepresentable_optimizer_is_kept(self):
        recipe, diags = self.read(FIXTURES / "18_dadaptation.toml")
        assert recipe.train.optimizer == "prodigy"
        assert recipe.passthrough["kohya"]["optimizer_type"] == "DAdaptAdam"
        assert codes_at(diags, "I616")

    def test_adafactor_relative_step(self):
        recipe, _ = self.read(FIXTURES / "15_adafactor_relative_step.toml")
        assert recipe.train.optimizer_args == {"scale_parameter": True, "relative_step": True}
        assert recipe.passthrough["kohya"]["lr_scheduler"] == "adafactor"

    def test_assert_all_read(self):
        recipe = Recipe(
            name="ohwx_woman_v2",
            base=Base(path="/models/sd_xl_base_1.0.safetensors"),
            datasets=(Dataset(path="/data/ohwx/photos", repeats=5, buckets=Buckets(max=2048)),),
            trigger="ohwx",
            regularization=(Regularization(path="/data/reg/women", class_prompt="woman"),),
            adapter=Adapter(rank=32, alpha=16.0),
            train=Train(
                steps=6000,
                batch=2,
                lr=5e-5,
                scheduler="cosine",
                warmup=Warmup(value=200),
                min_snr_gamma=5.0,
                noise_offset=0.0357,
                seed=1234,
                checkpointing=True,
                cache={"latents": True},
            ),
            save=Save(every=Interval(every=500)),
            output=Output(path="/output/ohwx"),
        )
        self.assert_all(recipe, read={"kohya": FIXTURES / "07_regularization.toml"})

    def test_assert_all_sample_prompts(self):
        recipe, _ = self.read(FIXTURES / "21_sample_prompts_epochs.toml")
        assert recipe.sample == Sample(
            every=Interval(every=2, unit="epochs"),
            sampler="euler_a",
            steps=30,
            cfg=6.5,
            seed=7,
            negative="blurry, lowres",
            prompts=(
                "inkst a lighthouse at dusk",
                "inkst portrait of a fisherman",
                "a lighthouse at dusk",
            ),
        )

    @pytest.mark.parametrize("name", ["missing.toml"])
    def test_missing_file_is_an_error(self, name, tmp_path):
        from lorafile.compiler.diagnostics import DiagnosticError

        with pytest.raises(DiagnosticError) as err:
            self.read(tmp_path / name)
        assert err.value.diagnostics[0].code == "I600"

    def test_invalid_toml_is_an_error_with_position(self, tmp_path):
        from lorafile.compiler.diagnostics import DiagnosticError

        bad = tmp_path / "bad.toml"
        bad.write_text("network_dim = 16\nlearning_rate = = 1\n")
        with pytest.raises(DiagnosticError) as err:
            self.read(bad)
        assert err.value.diagnostics[0].line == 2
