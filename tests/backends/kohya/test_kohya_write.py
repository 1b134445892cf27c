"""Writing recipes for kohya: one line per mapping (sqlglot-style `assert_all` cases)."""

from __future__ import annotations

import re

import yaml

from backend_case import BackendCase
from lorafile.spec.models import (
    Adapter,
    Base,
    Dataset,
    Hardware,
    Interval,
    Output,
    Recipe,
    Regularization,
    Sample,
    Save,
    Train,
    Warmup,
)
from repo_paths import ROOT, TESTS

DOCS = ROOT / "docs" / "diagnostics.md"
SOURCES = ROOT / "src" / "lorafile" / "backends"


def recipe(**changes) -> Recipe:
    fields = {
        "name": "r",
        "base": Base(path="/m.safetensors"),
        "datasets": (Dataset(path="/d"),),
        "train": Train(steps=100),
        "output": Output(path="/o"),
    }
    return Recipe(**{**fields, **changes})


class TestKohyaWrite(BackendCase):
    backend = "kohya"

    def test_defaults_kohya_would_get_wrong_are_written(self):
        self.assert_all(recipe(), write={"kohya": {
            "config.toml": {"learning_rate": 1e-4, "mixed_precision": "bf16",
                            "network_alpha": 16.0, "network_dim": 16, "save_precision": "fp16",
                            "sdpa": True, "network_train_unet_only": True, "lr_warmup_steps": 0},
            "dataset.toml": {"datasets": [{"resolution": [1024, 1024], "batch_size": 1,
                                           "enable_bucket": True, "min_bucket_reso": 256,
                                           "max_bucket_reso": 2048, "bucket_reso_steps": 64,
                                           "bucket_no_upscale": False,
                                           "subsets": [{"image_dir": "/d", "num_repeats": 1,
                                                        "caption_extension": ".txt",
                                                        "shuffle_caption": False,
                                                        "keep_tokens": 0, "flip_aug": False,
                                                        "color_aug": False,
                                                        "caption_dropout_rate": 0.0}]}]},
        }})  # fmt: skip

    def test_warmup_percent_is_a_ratio(self):
        r = recipe(
            train=Train(steps=1000, scheduler="linear", warmup=Warmup(value=5, unit="percent"))
        )
        self.assert_all(r, write={"kohya": {"config.toml": {"lr_warmup_steps": 0.05}}})

    def test_constant_with_warmup(self):
        r = recipe(train=Train(steps=1000, warmup=Warmup(value=10)))
        self.assert_all(r, write={"kohya": {"config.toml": {"lr_scheduler": "constant_with_warmup",
                                                            "lr_warmup_steps": 10}}})  # fmt: skip

    def test_adafactor_uses_the_recipe_lr(self):
        r = recipe(train=Train(steps=10, optimizer="adafactor"))
        expected = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
        self.assert_all(r, write={"kohya": {"config.toml": {"optimizer_args": expected}}})

    def test_optimizer_args_are_python_literals(self):
        r = recipe(train=Train(steps=10, optimizer_args={"d_coef": "1", "decouple": True,
                                                          "betas": "0.9,0.99", "name": "x y"}))  # fmt: skip
        args = ["d_coef=1", "decouple=True", "betas=0.9,0.99", "name='x y'"]
        self.assert_all(r, write={"kohya": {"config.toml": {"optimizer_args": args}}})

    def test_locon_writes_algo_preset_and_conv(self):
        r = recipe(adapter=Adapter(algo="locon", rank=16, alpha=8, conv_rank=8, conv_alpha=4))
        args = ["algo=locon", "preset=full", "conv_dim=8", "conv_alpha=4"]
        self.assert_all(r, write={"kohya": {"config.toml": {
            "network_module": "lycoris.kohya", "network_args": args}}})  # fmt: skip

    def test_loha_without_conv_uses_attn_mlp(self):
        r = recipe(adapter=Adapter(algo="loha", rank=8, targets=("attention", "ff")))
        self.assert_all(r, write={"kohya": {"config.toml": {
            "network_args": ["algo=loha", "preset=attn-mlp"]}}})  # fmt: skip

    def test_lora_conv_target(self):
        r = recipe(adapter=Adapter(rank=16, targets=("attention", "ff", "conv")))
        self.assert_all(r, write={"kohya": {"config.toml": {
            "network_module": "networks.lora", "network_args": ["conv_dim=16", "conv_alpha=16"]}}})  # fmt: skip

    def test_keep_is_a_step_window(self):
        r = recipe(save=Save(every=Interval(every=500), keep=6))
        self.assert_all(r, write={"kohya": {"config.toml": {"save_every_n_steps": 500,
                                                            "save_last_n_steps": 2500}}})  # fmt: skip

    def test_regularization_subset_and_weight(self):
        r = recipe(regularization=(Regularization(path="/reg", class_prompt="woman", weight=0.5),))
        files, _ = self.write(r)
        assert (
            "is_reg = true" in files["dataset.toml"]
            and 'class_tokens = "woman"' in files["dataset.toml"]
        )
        self.assert_all(r, write={"kohya": {"config.toml": {"prior_loss_weight": 0.5}}})

    def test_trigger_is_the_caption_prefix(self):
        r = recipe(trigger="ohwx")
        assert 'caption_prefix = "ohwx"' in self.write(r)[0]["dataset.toml"]

    def test_sample_prompt_lines(self):
        r = recipe(sample=Sample(every=Interval(every=100), seed=3, negative="blurry",
                                 prompts=("a cat",)))  # fmt: skip
        lines = self.write(r)[0]["sample_prompts.txt"].splitlines()
        assert lines[1] == "a cat --n blurry --w 1024 --h 1024 --d 3 --l 7 --s 28 --ss euler_a"

    def test_several_machines_get_an_accelerate_config(self):
        r = recipe(hardware=Hardware(gpus=4, machines=2, main_address="10.0.0.1", main_port=29500))
        files, _ = self.write(r)
        config = yaml.safe_load(files["accelerate.yaml"])
        assert config["num_processes"] == 8 and config["num_machines"] == 2
        assert config["main_process_ip"] == "10.0.0.1" and config["main_process_port"] == 29500
        assert re.search(
            r"accelerate launch .*--num_processes 8 --num_machines 2", files["train.sh"]
        )
        assert "--config_file config.toml --dataset_config dataset.toml" in files["train.sh"]

    def test_one_gpu_has_no_accelerate_config(self):
        files, _ = self.write(recipe())
        assert "accelerate.yaml" not in files
        assert "--num_processes 1" in files["train.sh"]

    def test_lossy_settings_are_errors_unless_allowed(self):
        r = recipe(save=Save(layout="diffusers"))
        _, strict = self.write(r)
        assert [d.code for d in strict if d.is_error] == ["T508"]
        _, lossy = self.write(r, allow_lossy=True)
        assert [d.severity for d in lossy if d.code == "T508"] == ["warning"]


def test_every_kohya_code_is_documented():
    text = "".join(p.read_text() for p in SOURCES.glob("kohya/*.py"))
    text += (SOURCES.parent / "commands" / "compile.py").read_text()
    codes = set(re.findall(r'"([TI]\d{3})"', text))
    assert codes, "no codes found"
    documented = set(re.findall(r"^### ([TI]\d{3})", DOCS.read_text(), re.M))
    assert codes <= documented, sorted(codes - documented)
    # T580, T582, T583: options kohya lacks or resolves; T590: values its TOML cannot hold.
    assert all(
        501 <= int(c[1:]) <= 519
        or c in ("T580", "T582", "T583", "T590")
        or 600 <= int(c[1:]) <= 629
        for c in codes
    )


RECIPES = sorted((TESTS / "fixtures" / "recipes").glob("*.recipe"))
RECIPES += sorted((TESTS / "fixtures" / "kohya" / "_shared").glob("*.recipe"))


class TestRecipeFixturesRoundTrip(BackendCase):
    backend = "kohya"

    def test_every_recipe_fixture_reads_back_as_its_projection(self):
        from lorafile.backends.kohya.project import project
        from lorafile.compiler.parse import parse_recipe

        assert RECIPES
        for path in RECIPES:
            original = parse_recipe(path.read_text(), file=str(path))
            files, _ = self.write(original, allow_lossy=True)
            got, _ = self.read_files(files)
            assert got == project(original)[0], path.name
