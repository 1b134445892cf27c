"""kohya configs as people write them read, write back and mean the same run (assert_identity).

"The same run" is judged on what sd-scripts would train with: the `--config_file` TOML
flattened and laid over the argparse defaults, each dataset subset's effective parameters after
the subset > dataset > general > argparse fallbacks, and the parsed sample prompts.
Documented normalisations (docs/backends/kohya.md): section names, key order and spelling
(16 vs 16.0, float vs [float]) change; `train_data_dir` folders become a dataset config; keys
sd-scripts ignores are dropped; the legacy `use_8bit_adam` becomes `optimizer_type`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from backend_case import BackendCase
from lorafile.backends.kohya import read as kr
from lorafile.backends.kohya import schema as schema
from lorafile.backends.kohya.compare import same, same_dataset_value
from lorafile.backends.kohya.options import OPTIONS
from repo_paths import TESTS

FIXTURES = TESTS / "fixtures" / "kohya"
CONFIGS = sorted(p for p in FIXTURES.glob("*.toml") if not p.name.endswith(".dataset.toml"))
NOT_COMPARED = set(schema.DATASET_KEYS) | {
    "train_data_dir",
    "reg_data_dir",
    "dataset_config",
    "in_json",
    "config_file",
    "output_config",
    "sample_prompts",
    "train_batch_size",
    "dataset_repeats",
    "caption_extention",
    "use_8bit_adam",
    "use_lion_optimizer",
}


def effective(config: Path, options: dict) -> dict:
    """What sd-scripts would run with: flat args, subsets, prompts."""
    flat, _, _ = schema.flatten(tomllib.loads(config.read_text(encoding="utf-8")))
    args = {**schema.defaults(), **flat}
    folder = config.parent
    chosen = options.get("dataset_config") or flat.get("dataset_config")
    if not chosen and not flat.get("train_data_dir") and (folder / "dataset.toml").is_file():
        chosen = "dataset.toml"
    if chosen:
        path = Path(chosen) if Path(chosen).is_absolute() else folder / chosen
        user = tomllib.loads(path.read_text(encoding="utf-8"))
    else:
        user, _ = schema.folder_config(args, folder)
    subsets = schema.blueprint(args, user)
    prompts = None
    if args.get("sample_prompts") and (folder / Path(args["sample_prompts"]).name).is_file():
        prompts = kr.load_prompts(folder / Path(args["sample_prompts"]).name, kr.DiagnosticBag())
    return {"args": args, "subsets": subsets, "prompts": prompts}


def _prompt(p: dict, sampler: str) -> dict:
    ss = str(p.get("ss") or sampler).lower()
    return {
        "prompt": p["prompt"],
        "n": p.get("n"),
        "w": p.get("w", 512),
        "h": p.get("h", 512),
        "d": p.get("d"),
        "l": p.get("l", 7.5),
        "s": p.get("s", 30),
        "ss": kr.KOHYA_SAMPLERS.get(ss, ss),
    }


class TestKohyaIdentity(BackendCase):
    backend = "kohya"

    def assert_same_effect(self, original: Path, options: dict, written: Path) -> None:
        before = effective(original, options)
        after = effective(written / "config.toml", {})
        a, b = before["args"], after["args"]
        for key in OPTIONS:
            if key == "output_name" and a.get(key) is None:
                continue  # normalised: the recipe always names its output file
            if key not in NOT_COMPARED:
                assert same(key, a.get(key), b.get(key), a, b), (
                    f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
                )
        for is_reg in (False, True):
            old = [s for s in before["subsets"] if s.is_reg == is_reg]
            new = [s for s in after["subsets"] if s.is_reg == is_reg]
            assert len(old) == len(new)
            for s, t in zip(old, new, strict=True):
                left, right = {**s.block, **s.params}, {**t.block, **t.params}
                for key in schema.DATASET_KEYS:
                    assert same_dataset_value(key, left.get(key), right.get(key)), (
                        f"subset {s.params.get('image_dir')}: {key}: {left.get(key)!r} -> "
                        f"{right.get(key)!r}"
                    )
        if before["prompts"] is not None:
            sampler_a, sampler_b = a.get("sample_sampler"), b.get("sample_sampler")
            assert [_prompt(p, sampler_a) for p in before["prompts"]] == [
                _prompt(p, sampler_b) for p in after["prompts"]
            ]

    @pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
    def test_identity(self, config: Path):
        self.assert_identity(config)


def test_at_least_twenty_fixtures():
    assert len(CONFIGS) >= 20


def test_both_intervals_set(tmp_path):
    """sd-scripts samples by epochs when both are set; saving uses both. Nothing is lost."""
    prompts = FIXTURES / "21_sample_prompts_epochs.prompts.txt"
    config = (FIXTURES / "21_sample_prompts_epochs.toml").read_text()
    config = config.replace('sample_prompts = "21_sample_prompts_epochs.prompts.txt"',
                            f"sample_prompts = {str(prompts)!r}\nsample_every_n_steps = 300\n"
                            "save_every_n_steps = 700")  # fmt: skip
    path = tmp_path / "both.toml"
    path.write_text(config.replace("'", '"'))
    recipe = TestKohyaIdentity().assert_identity(path)
    assert recipe.sample.every.unit == "epochs"
    assert recipe.passthrough["kohya"]["sample_every_n_steps"] == 300
