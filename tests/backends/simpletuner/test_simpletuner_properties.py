"""Property tests for the SimpleTuner backend: what is written reads back as the projection."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from lorafile.backends.base import get
from lorafile.backends.simpletuner import options as opts
from lorafile.compiler import dataset_count
from lorafile.compiler.diagnostics import DiagnosticBag
from strategies import recipes

SETTINGS = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True, scope="module")
def _no_dataset_walks():
    """Generated paths such as `/` or `..` exist on this machine: an epoch-counted run would walk
    them to count images (up to dataset_count.MAX_ENTRIES each). The properties hold whatever
    the folders hold, so every folder counts as empty here; test_simpletuner_warmup.py covers
    counted folders."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset_count, "list_images", lambda *args, **kwargs: [])
        yield


def _write_read(recipe, fmt="json"):
    backend = get("simpletuner", allow_lossy=True)
    compiled = backend.write(recipe, DiagnosticBag(), format=fmt)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in compiled.files.items():
            (Path(tmp) / name).write_text(text)
        return compiled, backend.read(Path(tmp), DiagnosticBag())


@SETTINGS
@given(recipes())
def test_read_write_is_projection(recipe):
    _compiled, back = _write_read(recipe)
    assert back == get("simpletuner").project(recipe)


@SETTINGS
@given(recipes())
def test_toml_reads_like_json(recipe):
    _, back = _write_read(recipe, "toml")
    assert back == get("simpletuner").project(recipe)


@SETTINGS
@given(recipes())
def test_every_emitted_key_is_a_valid_argument(recipe):
    compiled = get("simpletuner", allow_lossy=True).write(recipe, DiagnosticBag())
    config = json.loads(compiled.files["config.json"])
    for key, value in config.items():
        assert opts.check(key, value) is None, (key, value)
    for key in ("model_family", "model_type", "output_dir", "optimizer", "data_backend_config"):
        assert key in config
    backends = json.loads(compiled.files["multidatabackend.json"])
    defaults = [e for e in backends if e["dataset_type"] == "text_embeds" and e.get("default")]
    assert len(defaults) == 1
    for entry in backends:
        if entry["dataset_type"] == "image":
            assert entry["caption_strategy"] in ("filename", "textfile", "instanceprompt")
            assert isinstance(entry["crop"], bool)
            assert entry["repeats"] >= 0
    assert len({e["id"] for e in backends}) == len(backends)


def _round_trip(backend, recipe):
    compiled = backend.write(recipe, DiagnosticBag())
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in compiled.files.items():
            (Path(tmp) / name).write_text(text)
        return backend.read(Path(tmp), DiagnosticBag())


@SETTINGS
@given(recipes())
def test_migration_commutes(recipe):
    """kohya -> SimpleTuner keeps exactly what both trainers express."""
    kohya = get("kohya", allow_lossy=True)
    simpletuner = get("simpletuner", allow_lossy=True)
    migrated = _round_trip(simpletuner, _round_trip(kohya, recipe))
    assert migrated == simpletuner.project(kohya.project(recipe))
