"""kohya -> SimpleTuner with `max_train_epochs` and a ratio `lr_warmup_steps` (T550, T551).

sd-scripts reads `lr_warmup_steps = 0.05` as 5% of max_train_steps; SimpleTuner wants an int.
The migration counts the images next to the source config (empty dummy files: names only).
"""

from __future__ import annotations

import json
from pathlib import Path

from lorafile.cli import main

CONFIG = """\
[model_arguments]
pretrained_model_name_or_path = "/models/sd_xl_base_1.0.safetensors"
vae = "/models/sdxl-vae-fp16-fix"

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 16
network_alpha = 16
network_train_unet_only = true

[optimizer_arguments]
optimizer_type = "AdamW8bit"
learning_rate = 1e-4
lr_scheduler = "cosine"
lr_warmup_steps = 0.05

[training_arguments]
dataset_config = "dataset.toml"
output_dir = "/output/ohwx"
output_name = "ohwx"
max_train_epochs = 6
mixed_precision = "bf16"
gradient_checkpointing = true
sdpa = true
save_precision = "fp16"
"""

DATASET = """\
[general]
caption_extension = ".txt"

[[datasets]]
resolution = [1024, 1024]
batch_size = 2

  [[datasets.subsets]]
  image_dir = "data/photos"
  num_repeats = 5
"""

REG_SUBSET = """
  [[datasets.subsets]]
  image_dir = "data/reg"
  class_tokens = "woman"
  is_reg = true
  num_repeats = 1
"""


def kohya_folder(tmp_path: Path, reg: bool) -> Path:
    for name, count in (("photos", 10), ("reg", 40 if reg else 0)):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{name}{i}.png").write_bytes(b"")
    (tmp_path / "dataset.toml").write_text(DATASET + (REG_SUBSET if reg else ""))
    (tmp_path / "config.toml").write_text(CONFIG)
    return tmp_path / "config.toml"


def test_ratio_warmup_of_an_epoch_run_becomes_steps(tmp_path, capsys):
    source = kohya_folder(tmp_path, reg=False)
    assert main(["migrate", str(source), "--to", "simpletuner", "-o", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    # 10 images x 5 repeats / batch 2 = 25 steps per epoch x 6 epochs = 150; 5% is 8 (7.5).
    assert config["lr_warmup_steps"] == 8 and config["num_train_epochs"] == 6
    assert "[T550] warmup 5% of 6 epochs is written as `lr_warmup_steps: 8`" in out
    assert "Result: nothing lost" in out and "T551" not in out


def test_regularization_epochs_are_reported_with_both_counts(tmp_path, capsys):
    source = kohya_folder(tmp_path, reg=True)
    assert main(["migrate", str(source), "--to", "simpletuner", "-o", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    # SimpleTuner: 25 + 40 / 2 = 45 steps per epoch x 6 = 270; 5% is 14 (13.5).
    assert config["lr_warmup_steps"] == 14
    # sd-scripts re-uses reg images up to 50 samples: (50 + 50) / 2 = 50 per epoch x 6 = 300.
    assert "`epochs 6` is 270 steps in SimpleTuner" in out
    assert "against 300 in the recipe's meaning" in out and "`steps 300`" in out


def test_missing_folders_keep_the_loss(tmp_path, capsys):
    (tmp_path / "dataset.toml").write_text(DATASET)
    (tmp_path / "config.toml").write_text(CONFIG)
    source = tmp_path / "config.toml"
    assert main(["migrate", str(source), "--to", "simpletuner", "-o", str(tmp_path / "st")]) == 1
    out = capsys.readouterr().out
    assert "[T536] warmup 5% of a run measured in epochs cannot be written" in out
    assert f"`{tmp_path / 'data' / 'photos'}` does not exist here" in out
