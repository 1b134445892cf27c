"""sd-scripts' own argparse table (tests/fixtures/kohya/reference_options.json) and a check that
a config's keys are its arguments with values of the types its parser accepts."""

from __future__ import annotations

import json

from repo_paths import TESTS

REFERENCE = json.loads((TESTS / "fixtures" / "kohya" / "reference_options.json").read_text())
OPTION_TYPES = {o["dest"]: o for o in REFERENCE}


def check_argparse_types(config: dict) -> None:
    for section, table in config.items():
        assert isinstance(table, dict), f"top-level key {section}: keep keys in sections"
        for key, value in table.items():
            assert key in OPTION_TYPES, f"{key} is not an sd-scripts argument"
            option = OPTION_TYPES[key]
            if option["nargs"] == "*":
                assert isinstance(value, list), f"{key} must be an array"
                for item in value:
                    _check_scalar(key, item, option["type"])
            elif option["kind"] == "_StoreTrueAction":
                assert type(value) is bool, f"{key} = {value!r} must be a boolean"
            else:
                _check_scalar(key, value, option["type"])


def _check_scalar(key: str, value: object, kind: str) -> None:
    expected = {
        "str": (str,),
        "Path": (str,),
        "int": (int,),
        "float": (float,),
        "int_or_float": (int, float),
    }[kind]
    assert isinstance(value, expected) and not isinstance(value, bool), (
        f"{key} = {value!r} is not {kind}"
    )
