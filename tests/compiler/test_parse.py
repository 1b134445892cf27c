"""The parser on small recipes: each statement's meaning, and the positions it records."""

from __future__ import annotations

import pytest

from lorafile.compiler.diagnostics import DiagnosticError
from lorafile.compiler.parse import parse_recipe, parse_recipe_with_positions
from lorafile.spec import models as m
from repo_paths import ROOT

MINIMAL = 'recipe "t"\nbase sdxl "/m"\ndataset "/d"\noutput "/o"\n'


def parse(train: str = "steps 10", extra: str = "") -> m.Recipe:
    return parse_recipe(f"{MINIMAL}train {{\n{train}\n}}\n{extra}")


def test_minimal_recipe_takes_every_default():
    recipe = parse()
    assert recipe == m.Recipe(
        name="t",
        base=m.Base(path="/m"),
        datasets=(m.Dataset(path="/d"),),
        train=m.Train(steps=10),
        output=m.Output(path="/o"),
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("lr 2e-4", {"lr": 2e-4, "scheduler": "constant", "warmup": None}),
        ("lr 1e-4 cosine", {"scheduler": "cosine"}),
        ("lr 1e-4 warmup 5", {"warmup": m.Warmup(value=5, unit="steps")}),
        ("lr 1e-4 linear warmup 10%", {"warmup": m.Warmup(value=10, unit="percent")}),
        ("lr 1e-4 cosine_with_restarts 4", {"cycles": 4}),
        ("lr 1e-4 polynomial 0.5 warmup 1", {"power": 0.5}),
    ],
)
def test_lr_line(line, expected):
    train = parse(f"steps 10\n{line}").train
    assert {k: getattr(train, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("cache latents", "cache", m.Cache(latents=True)),
        ("cache text latents disk", "cache", m.Cache(latents=True, text=True, location="disk")),
        (
            'optimizer prodigy {\n d_coef 2\n safeguard_warmup true\n betas "0.9,0.99"\n}',
            "optimizer_args",
            {"d_coef": 2, "safeguard_warmup": True, "betas": "0.9,0.99"},
        ),
        ("checkpointing off", "checkpointing", False),
        ("memory auto", "memory", "auto"),
        ("base_precision fp8", "base_precision", "fp8"),
        ("max_grad_norm 0", "max_grad_norm", 0.0),
    ],
)
def test_train_statements(line, field, value):
    assert getattr(parse(f"steps 10\n{line}").train, field) == value


def test_dataset_statements():
    recipe = parse(
        extra='dataset "/e" {\n kind concept\n captions filename\n repeats 3\n'
        " resolution 896x1152\n buckets off 512..1024 step 32 no_upscale\n"
        " flip on\n color_aug on\n shuffle_captions on keep 2\n"
        " caption_dropout 7.5%\n}\n"
    )
    assert recipe.datasets[1] == m.Dataset(
        path="/e",
        kind="concept",
        captions="filename",
        repeats=3,
        resolution=m.Resolution(width=896, height=1152),
        buckets=m.Buckets(enabled=False, min=512, max=1024, step=32, upscale=False),
        flip=True,
        color_aug=True,
        shuffle_captions=True,
        keep_tokens=2,
        caption_dropout=0.075,
    )


def test_adapter_targets_default_by_algo():
    assert parse(extra="adapter locon\n").adapter.targets == ("attention", "ff", "conv")
    assert parse(extra="adapter lora { targets conv }\n").adapter.targets == ("conv",)


def test_sizes_and_hardware():
    hw = parse(
        extra='hardware {\n gpu "RTX 4070"\n vram 16 GiB\n gpus 2\n machines 3\n'
        ' main_address "h"\n main_port 1234\n}\n'
    ).hardware
    assert hw == m.Hardware(
        gpu="RTX 4070", vram=16 * 2**30, gpus=2, machines=3, main_address="h", main_port=1234
    )


def test_passthrough_values_keep_their_types():
    recipe = parse(
        extra='passthrough kohya {\n a 1\n b 1.0\n c true\n d "x"\n e [1, "y"]\n'
        ' "odd key" false\n}\n'
    )
    values = recipe.passthrough["kohya"]
    assert values == {"a": 1, "b": 1.0, "c": True, "d": "x", "e": [1, "y"], "odd key": False}
    assert isinstance(values["a"], int) and isinstance(values["b"], float)


def test_source_map_points_at_statements():
    text = f"{MINIMAL}train {{\n    steps 10\n    lr 1e-4 cosine warmup 5\n}}\n"
    _, smap = parse_recipe_with_positions(text)
    assert (smap[("train", "lr")].line, smap[("train", "lr")].column) == (7, 5)
    assert smap[("train", "warmup")].column == 27
    assert smap[("datasets", 0)].line == 3
    assert smap.find(("datasets", 0, "resolution", "width")) == smap[("datasets", 0)]


def test_windows_line_endings_and_bom_free_text():
    assert parse_recipe(MINIMAL.replace("\n", "\r\n") + "train {\r\n steps 1\r\n}\r\n").name == "t"


def test_error_is_raised_with_file_name():
    with pytest.raises(DiagnosticError) as info:
        parse_recipe(MINIMAL, file="x.recipe")
    assert info.value.diagnostics[0].file == "x.recipe"
    assert "x.recipe" in str(info.value)


def test_docs_cover_every_statement_and_code():
    """docs/recipe.md names every statement; docs/diagnostics.md has an entry per R code."""
    import re

    from lorafile.compiler.statements import TABLES

    root = ROOT
    recipe_doc = (root / "docs" / "recipe.md").read_text(encoding="utf-8")
    for table, defs in TABLES.items():
        for name in defs:
            assert f"`{name}" in recipe_doc, (table, name)
    sources = "".join(
        (root / "src" / "lorafile" / p).read_text(encoding="utf-8")
        for p in (
            "compiler/syntax.py",
            "compiler/statements.py",
            "compiler/parse.py",
            "compiler/validate.py",
            "backends/load.py",
            "commands/fmt.py",
        )
    )
    codes = set(re.findall(r'"(R[12]\d\d)"', sources))
    assert len(codes) >= 15
    diagnostics_doc = (root / "docs" / "diagnostics.md").read_text(encoding="utf-8")
    for code in codes:
        assert f"### {code}:" in diagnostics_doc, code


def test_docs_example_is_canonical():

    from lorafile.compiler.format import format_source

    doc = (ROOT / "docs" / "recipe.md").read_text(encoding="utf-8")
    example = doc.split("```\n", 2)[1]
    assert format_source(example) == example
