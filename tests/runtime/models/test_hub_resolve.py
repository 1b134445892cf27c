"""Base models by hub id: parsing, file choice, and resolution from a fake hub cache, offline.

Nothing here touches the network: the cache is built by hand in a temporary HF_HOME with
huggingface_hub's own layout (models--org--name/{blobs,refs,snapshots/<commit>/...}, snapshot
files symlinked to content-addressed blobs) and HF_HUB_OFFLINE=1 is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from lorafile.compiler.diagnostics import DiagnosticBag, DiagnosticError
from lorafile.compiler.hub import HubRef, cached_snapshot, is_hub_ref, parse_hub_ref
from lorafile.runtime.models.hub import choose_files, resolve_model

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
MARK = "conv_in.bias"


def add_to_cache(hf_home: Path, repo_id: str, files: dict[str, Path], commit: str, refs=("main",)):
    """Put `files` (path in the repo -> local file) into the hub cache as huggingface_hub does."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def folder_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's own setting, not lorafile's
    monkeypatch.delenv("LORAFILE_SET_HUB_OFFLINE", raising=False)
    return home


@pytest.fixture
def hub_cache(tiny_sdxl_dir, tmp_path, offline_home):
    """tiny-org/tiny-sdxl (diffusers, main = commit A; tag v2 = commit B whose UNet has an fp16
    variant with other weights), tiny-org/tiny-single (one single-file checkpoint),
    tiny-org/pickled (only .bin weights)."""
    diffusers = tiny_sdxl_dir / "diffusers"
    add_to_cache(offline_home, "tiny-org/tiny-sdxl", folder_files(diffusers), COMMIT_A)
    fp16 = _fp16_unet(tiny_sdxl_dir, tmp_path)
    files_b = folder_files(diffusers) | {"unet/diffusion_pytorch_model.fp16.safetensors": fp16}
    add_to_cache(offline_home, "tiny-org/tiny-sdxl", files_b, COMMIT_B, refs=("v2",))
    single = {"tiny.safetensors": tiny_sdxl_dir / "tiny_sdxl.safetensors"}
    add_to_cache(offline_home, "tiny-org/tiny-single", single, COMMIT_A)
    pickled = tmp_path / "pytorch_model.bin"
    pickled.write_bytes(b"not really a pickle")
    add_to_cache(
        offline_home,
        "tiny-org/pickled",
        {"config.json": diffusers / "vae" / "config.json", "diffusion_pytorch_model.bin": pickled},
        COMMIT_A,
    )
    return offline_home


def _fp16_unet(tiny_sdxl_dir: Path, tmp_path: Path) -> Path:
    """The tiny UNet's weights in fp16, conv_in's bias plus one: a variant told apart by it."""
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_sdxl_dir / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors")
    state[MARK] = state[MARK] + 1
    out = tmp_path / "unet.fp16.safetensors"
    save_file({k: v.half() for k, v in state.items()}, out)
    return out


# ---- reading the text (compile path) ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        (
            "stabilityai/stable-diffusion-xl-base-1.0",
            HubRef("stabilityai/stable-diffusion-xl-base-1.0"),
        ),
        ("org/name@v1.1", HubRef("org/name", "v1.1")),
        ("org/name/sd_xl.safetensors", HubRef("org/name", None, "sd_xl.safetensors")),
        ("org/name@main/sub/m.safetensors", HubRef("org/name", "main", "sub/m.safetensors")),
        ("/models/sdxl", None),
        ("./org/name", None),
        ("models/sd_xl_base_1.0.safetensors", None),
        ("C:\\models\\x", None),
        ("sd_xl_base_1.0.safetensors", None),
        ("org/name/../x", None),
        ("~/models/x", None),
    ],
)
def test_hub_references_are_read_from_the_text(text, ref):
    assert parse_hub_ref(text) == ref
    if ref is not None:
        assert str(ref) == text


def test_an_existing_folder_wins_over_a_hub_id(tmp_path):
    assert is_hub_ref("org/name", tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_ref("org/name", tmp_path)


def test_download_command_names_file_and_revision():
    ref = parse_hub_ref("org/name@v2/m.safetensors")
    assert ref.download_command() == "hf download org/name m.safetensors --revision v2"


# ---- which files of a repository are needed -----------------------------------------------

SDXL_REPO = [
    "model_index.json",
    "sd_xl_base_1.0.safetensors",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/merges.txt",
    *(
        f"{part}/{name}"
        for part, stem in (
            ("unet", "diffusion_pytorch_model"),
            ("vae", "diffusion_pytorch_model"),
            ("text_encoder", "model"),
            ("text_encoder_2", "model"),
        )
        for name in (
            "config.json",
            f"{stem}.safetensors",
            f"{stem}.fp16.safetensors",
            f"{stem}.bin",
            "openvino_model.bin",
            "model.onnx",
        )
    ),
]


def test_a_pipeline_repository_gets_configs_and_one_set_of_safetensors():
    plain = choose_files(SDXL_REPO, None, "x/y")
    assert "unet/diffusion_pytorch_model.safetensors" in plain
    assert "text_encoder_2/model.safetensors" in plain
    assert not any(f.endswith((".bin", ".onnx")) or ".fp16." in f for f in plain)
    assert "sd_xl_base_1.0.safetensors" not in plain
    assert {"model_index.json", "scheduler/scheduler_config.json", "tokenizer_2/merges.txt"} <= set(
        plain
    )
    fp16 = choose_files(SDXL_REPO, "fp16", "x/y")
    weights = [f for f in fp16 if f.endswith(".safetensors")]
    assert len(weights) == 4 and all(".fp16." in f for f in weights)


def test_a_variant_missing_in_a_part_falls_back_to_its_plain_weights():
    files = [f for f in SDXL_REPO if f != "vae/diffusion_pytorch_model.fp16.safetensors"]
    chosen = choose_files(files, "fp16", "x/y")
    assert "vae/diffusion_pytorch_model.safetensors" in chosen
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in chosen


def test_sharded_weights_are_taken_with_their_index():
    files = [
        "config.json",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    assert choose_files(files, None, "x/vae") == files[:1] + sorted(files[1:])


@pytest.mark.parametrize(
    ("files", "code"),
    [
        (["config.json", "diffusion_pytorch_model.bin"], "F702"),
        (["model.ckpt", "README.md"], "F702"),
        (["a.safetensors", "b.safetensors"], "F707"),
        (["README.md"], "F703"),
        (["model_index.json", "unet/config.json"], "F703"),
    ],
)
def test_repositories_without_one_safetensors_model_are_refused(files, code):
    with pytest.raises(DiagnosticError) as err:
        choose_files(files, None, "x/y")
    assert err.value.diagnostics[0].code == code


# ---- resolving from the fake cache, offline -------------------------------------------------


def test_a_cached_repository_resolves_offline_with_revisions(hub_cache, tmp_path):
    main = resolve_model("tiny-org/tiny-sdxl", tmp_path)
    assert main.source == "cache" and main.path.name == COMMIT_A
    assert (main.path / "model_index.json").is_file()
    tagged = resolve_model("tiny-org/tiny-sdxl@v2", tmp_path)
    assert tagged.path.name == COMMIT_B
    by_commit = resolve_model(f"tiny-org/tiny-sdxl@{COMMIT_B}", tmp_path)
    assert by_commit.path == tagged.path
    assert cached_snapshot(parse_hub_ref("tiny-org/tiny-sdxl@v2")) == tagged.path


def test_a_file_in_a_repository_resolves_to_that_file(hub_cache, tmp_path):
    whole = resolve_model("tiny-org/tiny-single", tmp_path)
    named = resolve_model("tiny-org/tiny-single/tiny.safetensors", tmp_path)
    assert whole.path == named.path and named.path.name == "tiny.safetensors"


def test_the_fp16_variant_is_loaded_where_the_repository_has_it(hub_cache, tmp_path):
    import torch

    from lorafile.runtime.models.sdxl import load_sdxl

    plain = resolve_model("tiny-org/tiny-sdxl@v2", tmp_path).path
    regular = load_sdxl(plain, parts=("unet", "vae"))
    fp16 = load_sdxl(plain, parts=("unet", "vae"), variant="fp16")
    weight = regular.unet.state_dict()[MARK]
    assert torch.equal(fp16.unet.state_dict()[MARK].float(), (weight + 1).half().float())
    # The VAE has no fp16 files: its plain weights are used, as diffusers falls back.
    plain_vae, fp16_vae = regular.vae.state_dict(), fp16.vae.state_dict()
    assert all(torch.equal(plain_vae[k], fp16_vae[k]) for k in plain_vae)


def test_a_missing_model_offline_says_how_to_download_it(offline_home, tmp_path):
    with pytest.raises(DiagnosticError) as err:
        resolve_model("nobody/missing-model@v3", tmp_path)
    diag = err.value.diagnostics[0]
    assert diag.code == "F705"
    assert "hf download nobody/missing-model --revision v3" in diag.help


def test_pickle_weights_on_the_hub_are_refused(hub_cache, tmp_path):
    for text in ("tiny-org/pickled", "tiny-org/tiny-single/model.ckpt"):
        with pytest.raises(DiagnosticError) as err:
            resolve_model(text, tmp_path)
        assert err.value.diagnostics[0].code == "F702"


def test_plan_shows_where_the_model_resolved(hub_cache, tmp_path):
    from lorafile.runtime.train.plan import build_plan, describe_plan
    from lorafile.spec.models import Base
    from train_runs import tiny_recipe

    recipe = tiny_recipe(Path("unused"), tmp_path / "data", tmp_path / "out")
    cached = recipe.model_copy(update={"base": Base(path="tiny-org/tiny-sdxl")})
    plan = build_plan(cached, DiagnosticBag(), tmp_path)
    assert plan["resolved"]["base"] == "tiny-org/tiny-sdxl"
    assert f"cached at {hub_cache / 'hub'}" in describe_plan(plan)
    missing = recipe.model_copy(update={"base": Base(path="nobody/missing")})
    text = describe_plan(build_plan(missing, DiagnosticBag(), tmp_path))
    assert "not in the cache" in text and "hf download nobody/missing" in text


def test_a_hub_id_recipe_trains_offline_from_the_cache(hub_cache, tmp_path):
    import torch

    from lorafile.runtime.demo import make_dataset
    from lorafile.runtime.train.loop import TrainOptions, train
    from lorafile.spec.models import Base
    from train_runs import plan_for, short_train, tiny_recipe

    torch.set_num_threads(1)
    make_dataset(tmp_path / "data", 2, seed=2)
    recipe = tiny_recipe(
        Path("unused"),
        tmp_path / "data",
        tmp_path / "out",
        base=Base(path="tiny-org/tiny-sdxl@v2", vae="tiny-org/tiny-sdxl", variant="fp16"),
        train=short_train(),
        sample=None,
    )
    plan = plan_for(recipe)
    train(plan, TrainOptions(quiet=True))
    assert (tmp_path / "out" / "tiny.safetensors").is_file()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "finished"


def test_train_reports_a_missing_hub_model(offline_home, tmp_path):
    from lorafile.runtime.demo import make_dataset
    from lorafile.runtime.train.loop import TrainOptions, train
    from lorafile.spec.models import Base
    from train_runs import plan_for, tiny_recipe

    make_dataset(tmp_path / "data", 1, seed=2)
    recipe = tiny_recipe(
        Path("unused"), tmp_path / "data", tmp_path / "out", base=Base(path="nobody/absent")
    )
    with pytest.raises(DiagnosticError) as err:
        train(plan_for(recipe), TrainOptions(quiet=True))
    assert err.value.diagnostics[0].code == "F705"
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_lint_shows_where_a_hub_model_is(hub_cache, tmp_path):
    from lorafile.compiler.lint import lint_recipe, render_text
    from lorafile.spec.models import Base
    from train_runs import tiny_recipe

    recipe = tiny_recipe(Path("unused"), tmp_path / "data", tmp_path / "out")
    recipe = recipe.model_copy(
        update={"base": Base(path="tiny-org/tiny-sdxl@v2", vae="nobody/vae")}
    )
    report = lint_recipe(recipe, base_dir=tmp_path)
    text = render_text(report)
    snapshot = hub_cache / "hub" / "models--tiny-org--tiny-sdxl" / "snapshots" / COMMIT_B
    assert f"hub tiny-org/tiny-sdxl@v2, cached at {snapshot}" in text
    assert "`hf download nobody/vae`" in report.models["vae"]


def test_online_only_the_chosen_files_are_downloaded(tmp_path, monkeypatch):
    """No network: huggingface_hub's listing and download are replaced by recorders."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def snapshot_download(repo_id, revision=None, cache_dir=None, local_files_only=False, **kw):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        calls.append({"repo_id": repo_id, "revision": revision, "cache_dir": cache_dir, **kw})
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(
        huggingface_hub.HfApi, "list_repo_files", lambda self, r, revision=None: SDXL_REPO
    )
    got = resolve_model("stabilityai/sdxl@v1", tmp_path, variant="fp16")
    assert got.source == "download" and got.path == tmp_path / "snapshot"
    (call,) = calls
    assert call["revision"] == "v1" and call["cache_dir"] == str(tmp_path / "hf" / "hub")
    assert call["allow_patterns"] == choose_files(SDXL_REPO, "fp16", "stabilityai/sdxl@v1")
    assert "token" not in call  # huggingface_hub's own (HF_TOKEN or `hf auth login`)


def test_lorafile_own_offline_setting_does_not_stop_a_download(monkeypatch):
    """lorafile.runtime sets HF_HUB_OFFLINE to keep libraries quiet (runtime/environment.py);
    only a user's own setting forbids downloading a recipe's hub model."""
    from huggingface_hub import constants

    from lorafile.compiler.hub import hub_offline
    from lorafile.runtime.models.hub import _online

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LORAFILE_SET_HUB_OFFLINE", "1")
    assert not hub_offline()
    monkeypatch.delenv("LORAFILE_SET_HUB_OFFLINE")
    assert hub_offline()
    before = constants.HF_HUB_OFFLINE
    with _online():
        assert constants.HF_HUB_OFFLINE is False
    assert before == constants.HF_HUB_OFFLINE
