"""Properties of the kohya backend over generated recipes (hypothesis, derandomized).

- read(write(r)) == project(r), and every field project changed beyond spelling has a T5xx;
- every key of every emitted config.toml is an sd-scripts argument with the type argparse gives;
- every dataset.toml passes sd-scripts' dataset schema (config_util, kohya.md §3.2), written
  out again here independently of the backend;
- every TOML file reads the same with tomllib and with the `toml` package sd-scripts uses.
"""

from __future__ import annotations

import json
import tempfile
import tomllib
from pathlib import Path

import toml
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend_case import BackendCase
from kohya_args import OPTION_TYPES, REFERENCE, check_argparse_types
from lorafile.backends.kohya.project import project
from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.spec.models import Recipe
from repo_paths import ROOT
from strategies import recipes

FIELD_CODES = {
    "base": {"T517", "T518"},
    "adapter": {"T507", "T510"},
    "ema": {"T582"},
    "train": {"T504", "T505", "T506", "T515", "T580"},
    "datasets": {"T509", "T511", "T512"},
    "regularization": {"T502", "T503"},
    "sample": {"T501", "T516"},
    "save": {"T508"},
    "passthrough": {"T513", "T514"},
}
SETTINGS = settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# sd-scripts' dataset config schema (library/config_util.py; kohya.md §3.2):
# key -> (accepted types, where it may appear: g=[general], d=[[datasets]], s=subsets).
NUMBER = (int, float)
DATASET_SCHEMA = {
    **dict.fromkeys(
        [
            "batch_size",
            "min_bucket_reso",
            "max_bucket_reso",
            "bucket_reso_steps",
            "validation_seed",
        ],
        ((int,), "gd"),
    ),
    **dict.fromkeys(["enable_bucket", "bucket_no_upscale"], ((bool,), "gd")),
    "resolution": ((int, list), "gd"),
    **dict.fromkeys(["network_multiplier", "validation_split"], ((float,), "gd")),
    **dict.fromkeys(
        ["num_repeats", "keep_tokens", "token_warmup_min", "caption_dropout_every_n_epochs"],
        ((int,), "gds"),
    ),
    **dict.fromkeys(
        [
            "shuffle_caption",
            "flip_aug",
            "color_aug",
            "random_crop",
            "enable_wildcard",
            "cache_info",
        ],
        ((bool,), "gds"),
    ),
    **dict.fromkeys(
        [
            "keep_tokens_separator",
            "caption_separator",
            "secondary_separator",
            "caption_prefix",
            "caption_suffix",
            "caption_extension",
            "class_tokens",
            "resize_interpolation",
        ],
        ((str,), "gds"),
    ),
    **dict.fromkeys(
        ["token_warmup_step", "caption_dropout_rate", "caption_tag_dropout_rate"], (NUMBER, "gds")
    ),
    "face_crop_aug_range": ((list,), "gds"),
    "custom_attributes": ((dict,), "gds"),
    **dict.fromkeys(["image_dir", "metadata_file", "conditioning_data_dir"], ((str,), "s")),
    **dict.fromkeys(["is_reg", "alpha_mask"], ((bool,), "s")),
}


def check_dataset_config(doc: dict) -> None:
    """Reject what voluptuous would: unknown keys, keys at the wrong level, wrong types."""
    assert set(doc) <= {"general", "datasets"}, set(doc)
    _check_level(doc.get("general", {}), "g")
    for dataset in doc.get("datasets", []):
        _check_level({k: v for k, v in dataset.items() if k != "subsets"}, "d")
        assert dataset.get("subsets"), "a dataset without subsets"
        for subset in dataset["subsets"]:
            _check_level(subset, "s")
            assert "image_dir" in subset, "DreamBooth subsets need image_dir"


def _check_level(table: dict, level: str) -> None:
    for key, value in table.items():
        assert key in DATASET_SCHEMA, f"extra keys not allowed: {key}"
        types, levels = DATASET_SCHEMA[key]
        assert level in levels, f"{key} not allowed in {level}"
        assert isinstance(value, types) and (bool in types or not isinstance(value, bool)), (
            f"{key} = {value!r}: expected {types}"
        )
        if key == "resolution" and isinstance(value, list):
            assert len(value) == 2 and all(type(v) is int for v in value)


class TestKohyaProperties(BackendCase):
    backend = "kohya"

    @SETTINGS
    @given(recipes())
    def test_read_write_equals_project(self, recipe: Recipe):
        files, diagnostics = self.write(recipe, allow_lossy=True)
        got, _ = self.read_files(files)
        projected, reasons = project(recipe)
        assert got == projected
        canonical, _ = project(recipe, lossy=False)
        codes = {r.code for r in reasons}
        for name in Recipe.model_fields:
            if getattr(canonical, name) != getattr(projected, name):
                assert codes & FIELD_CODES[name], f"{name} changed without a T5xx"
        assert codes <= {d.code for d in diagnostics}

    @SETTINGS
    @given(recipes())
    def test_emitted_files_are_valid(self, recipe: Recipe):
        files, _ = self.write(recipe, allow_lossy=True)
        for name, text in files.items():
            if name.endswith(".toml"):
                assert toml.loads(text) == tomllib.loads(text), name
        check_argparse_types(tomllib.loads(files["config.toml"]))
        check_dataset_config(tomllib.loads(files["dataset.toml"]))


KEYS = st.sampled_from(
    [
        *sorted(OPTION_TYPES),
        "batch_size",
        "epoch",
        "class_tokens",
        "num_repeats",
        "image_dir",
        "typo_key",
    ]
)
TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
TOML_VALUES = st.one_of(TOML_SCALARS, st.lists(TOML_SCALARS, max_size=3))


@st.composite
def kohya_configs(draw) -> dict:
    """Configs as people break them: any key, any type, some in sections, some nested."""
    flat = draw(st.dictionaries(KEYS, TOML_VALUES, max_size=12))
    doc: dict = {"model_arguments": {"pretrained_model_name_or_path": "/m.safetensors"}}
    for key, value in flat.items():
        where = draw(st.sampled_from(["top", "section", "nested"]))
        if where == "top":
            doc[key] = value
        elif where == "section":
            doc.setdefault("training_arguments", {})[key] = value
        else:
            doc.setdefault("general", {}).setdefault("dataset_args", {})[key] = value
    return doc


class TestKohyaReaderNeverCrashes(BackendCase):
    backend = "kohya"

    @SETTINGS
    @given(kohya_configs())
    def test_any_config_reads_or_reports(self, doc: dict):
        text = tomli_w.dumps(doc)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "config.toml"
            path.write_text(text, encoding="utf-8")
            try:
                recipe, _diagnostics = self.read(path)
            except DiagnosticError as err:
                assert err.diagnostics and all(d.code.startswith("I6") for d in err.diagnostics)
                return
        assert isinstance(recipe, Recipe)
        files, _ = self.write(recipe, allow_lossy=True)
        assert "config.toml" in files


def test_reference_table_is_the_shared_one():
    """The copied option table matches ../shared/reference when that folder is mounted."""
    shared = ROOT.parent / "shared" / "reference"
    original = shared / "kohya_sdxl_train_network_options.json"
    assert len(REFERENCE) == 196
    if original.is_file():
        assert json.loads(original.read_text()) == REFERENCE


def test_backend_option_table_matches_the_reference():
    from lorafile.backends.kohya.options import OPTIONS

    assert set(OPTIONS) == set(OPTION_TYPES)
    for dest, option in OPTIONS.items():
        ref = OPTION_TYPES[dest]
        kind = "flag" if ref["kind"] == "_StoreTrueAction" else ref["type"]
        assert (option.type, option.is_list) == (kind, ref["nargs"] == "*"), dest
