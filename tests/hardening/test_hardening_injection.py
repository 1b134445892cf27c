"""Issue 12 §1: generated launch scripts are safe for any string a recipe or a foreign config
carries. SimpleTuner's train.sh wrote the recipe name raw into a comment, so a name with a line
break ran a command; the name also arrives from someone else's kohya `output_name` through
`migrate` and `compile`.

Every generated script must pass `bash -n`, and run under bash with stub launchers on PATH it
must call exactly the intended command with exactly the intended argv, and nothing else: no
CANARY file that `$(...)`, backticks, `;` or a new line would create. Hypothesis draws hostile
strings (derandomized, bounded) for every string field that reaches the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_inputs import (
    CANARY,
    INJECTIONS,
    StubShell,
    canaries,
    hostile_text,
    names_a_file,
    recipe_string,
)
from hypothesis import HealthCheck, example, given, settings

from lorafile.backends import shell
from lorafile.cli import main

SETTINGS = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KOHYA_ARGV = [
    "accelerate",
    "launch",
    "--num_cpu_threads_per_process",
    "1",
    "--config_file",
    "accelerate.yaml",
    "--machine_rank",
    "0",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "bf16",
    "sd-scripts/sdxl_train_network.py",
    "--config_file",
    "config.toml",
    "--dataset_config",
    "dataset.toml",
]
SIMPLETUNER_ARGV = ["simpletuner", "train"]


def _recipe(name: str, text: str) -> str:
    s = recipe_string
    return f"""recipe {s(name)}
base sdxl {s("/models/" + text)} {{
    vae {s(text)}
}}
dataset {s(text)} {{
    kind style
}}
trigger {s("t" + text)}
train {{
    steps 100
    precision bf16
}}
sample every 50 steps {{
    prompt {s("p " + text)}
}}
hardware {{
    gpus 2
    main_address {s(text)}
}}
output {s(text)}
"""


def _fresh(root: Path, label: str) -> Path:
    folder = root / label
    folder.mkdir()
    return folder


def _assert_script_runs_only(out: Path, argv: list[str], sh: StubShell, root: Path) -> None:
    script = out / "train.sh"
    checked = sh.syntax_ok(script)
    assert checked.returncode == 0, checked.stderr
    sh.reset()
    ran = sh.run(script)
    assert ran.returncode == 0, ran.stderr
    assert sh.calls() == [argv]
    assert canaries(root) == []


def _compile_and_run(root: Path, name: str, text: str, target: str, sh: StubShell) -> None:
    work = _fresh(root, f"{target}-{len(list(root.iterdir()))}")
    source = work / "in.recipe"
    source.write_text(_recipe(name, text), encoding="utf-8")
    out = work / "out"
    code = main(["compile", str(source), "-t", target, "-o", str(out), "--allow-lossy"])
    valid = names_a_file(name) and "\x00" not in text
    if not valid:  # R208 / R209: refused with a diagnostic, nothing written
        assert code == 1
        assert not (out / "train.sh").exists()
        return
    assert code == 0
    argv = KOHYA_ARGV if target == "kohya" else SIMPLETUNER_ARGV
    _assert_script_runs_only(out, argv, sh, root)


@pytest.mark.parametrize("target", ["simpletuner", "kohya"])
@pytest.mark.parametrize("name", [i for i in INJECTIONS if names_a_file(i)])
def test_a_hostile_recipe_name_is_inert_in_train_sh(tmp_path, capsys, target, name):
    """The reported attack: `recipe "x\\ntouch CANARY"` ran `touch` from SimpleTuner's script."""
    _compile_and_run(tmp_path, name, "data", target, StubShell(tmp_path))
    assert not (tmp_path / CANARY).exists()


@SETTINGS
@given(name=hostile_text(), text=hostile_text())
@example(name=f"x\ntouch {CANARY}", text=f"$(touch {CANARY})")
@example(name="`id`", text="\x00")
def test_compiled_scripts_run_only_the_trainer(tmp_path_factory, name, text):
    root = tmp_path_factory.mktemp("inject")
    sh = StubShell(root)
    for target in ("simpletuner", "kohya"):
        _compile_and_run(root, name, text, target, sh)


def _kohya_config(folder: Path, name: str, text: str) -> Path:
    import tomli_w

    config = {
        "pretrained_model_name_or_path": "/models/" + text,
        "output_dir": "/out/" + text,
        "output_name": name,
        "train_data_dir": "/data/" + text,
        "learning_rate": 1e-4,
        "max_train_steps": 100,
        "mixed_precision": "bf16",
        "logging_dir": text,
        "resolution": "1024,1024",
        "network_module": "networks.lora",
        "network_dim": 16,
        "sdpa": True,
    }
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def _simpletuner_config(folder: Path, name: str, text: str) -> Path:
    config = {
        "model_family": "sdxl",
        "model_type": "lora",
        "pretrained_model_name_or_path": "/models/" + text,
        "output_dir": "/out/" + text,
        "tracker_run_name": name,
        "data_backend_config": "multidatabackend.json",
        "learning_rate": 1e-4,
        "max_train_steps": 100,
        "mixed_precision": "bf16",
        "validation_prompt": text,
    }
    backends = [
        {"id": "a", "type": "local", "instance_data_dir": "/d/" + text, "instance_prompt": text},
        {"id": "te", "type": "local", "dataset_type": "text_embeds", "default": True},
    ]
    (folder / "multidatabackend.json").write_text(json.dumps(backends), encoding="utf-8")
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@SETTINGS
@given(name=hostile_text(), text=hostile_text())
@example(name=f"x\ntouch {CANARY}", text=f"`touch {CANARY}`")
def test_migrated_foreign_configs_give_inert_scripts(tmp_path_factory, name, text):
    """A kohya `output_name` (or a SimpleTuner run name) someone else wrote, through migrate."""
    root = tmp_path_factory.mktemp("migrate")
    sh = StubShell(root)
    cases = [
        (_kohya_config, "simpletuner", SIMPLETUNER_ARGV),
        (_simpletuner_config, "kohya", KOHYA_ARGV_SINGLE),
    ]
    valid = names_a_file(name) and "\x00" not in text
    for write, to, argv in cases:
        work = _fresh(root, f"{to}-src")
        source = write(work, name, text)
        out = work / "out"
        code = main(["migrate", str(source), "--to", to, "-o", str(out), "--allow-lossy"])
        # A value no recipe can hold (R208/R209, reported as I614/I652): nothing is written.
        assert code == (0 if valid else 1)
        if valid:
            _assert_script_runs_only(out, argv, sh, root)
        else:
            assert not (out / "train.sh").exists()


KOHYA_ARGV_SINGLE = [
    "accelerate",
    "launch",
    "--num_cpu_threads_per_process",
    "1",
    "--num_processes",
    "1",
    "--num_machines",
    "1",
    "--mixed_precision",
    "bf16",
    "sd-scripts/sdxl_train_network.py",
    "--config_file",
    "config.toml",
    "--dataset_config",
    "dataset.toml",
]


@pytest.mark.parametrize(
    ("text", "inline"),
    [
        ("plain name", "plain name"),
        ("a\nb", '"a\\nb"'),
        ("\x1b[31m", '"\\u001b[31m"'),
        ("\u202eevil", '"\\u202eevil"'),
        ("x\x00", '"x\\u0000"'),
    ],
)
def test_comment_text_stays_on_one_printable_line(text, inline):
    assert shell.inline(text) == inline
    assert "\n" not in shell.comment(text) and shell.comment(text).isprintable()


def test_quoted_words_are_single_shell_words():
    assert shell.command(["a b", "$(x)", "`y`", shell.Expansion('"$HOME"')]) == (
        "'a b' '$(x)' '`y`' \"$HOME\""
    )


def test_suggested_commands_quote_the_path(tmp_path, capsys):
    """A command lorafile suggests is one a user pastes into a shell: the path is quoted."""
    folder = tmp_path / f"$(touch {CANARY})"
    folder.mkdir()
    config = folder / "config.toml"
    fixture = Path(__file__).parent.parent / "fixtures" / "kohya" / "01_seed_style_lora.toml"
    config.write_text(fixture.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["fmt", str(config)]) == 0
    assert f"lorafile import kohya '{config}' -o NAME.recipe" in capsys.readouterr().err
