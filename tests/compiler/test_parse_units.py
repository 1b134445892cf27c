"""spec/units.py: each parser reads what the recipe language writes, and each formatter is its
exact inverse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorafile.spec import units
from lorafile.spec.units import UnitError

FAST = settings(max_examples=150, derandomize=True, deadline=None, database=None)


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("12GB", 12 * 10**9),
        ("16GiB", 16 * 2**30),
        ("16 GiB", 16 * 2**30),
        ("24gb", 24 * 10**9),
        ("1.5GiB", 3 * 2**29),
        ("512MiB", 2**29),
        ("80GB", 80 * 10**9),
        ("7B", 7),
    ],
)
def test_parse_size(text, nbytes):
    assert units.parse_size(text) == nbytes


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("12", "has no unit"),
        ("12GX", "not a size unit"),
        ("GB", "not a size"),
        ("1.5B", "whole number of bytes"),
    ],
)
def test_parse_size_errors(text, needle):
    with pytest.raises(UnitError) as info:
        units.parse_size(text)
    assert needle in info.value.message
    assert info.value.help


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(12 * 2**30, "12GiB"), (12 * 10**9, "12GB"), (1536 * 2**20, "1536MiB"), (123, "123B")],
)
def test_format_size(nbytes, text):
    assert units.format_size(nbytes) == text


@FAST
@given(st.integers(1, 2**50))
def test_size_round_trip(nbytes):
    assert units.parse_size(units.format_size(nbytes)) == nbytes


@pytest.mark.parametrize(
    ("text", "size"), [("1024", (1024, 1024)), ("1024x768", (1024, 768)), ("832X1216", (832, 1216))]
)
def test_parse_resolution(text, size):
    assert units.parse_resolution(text) == size


@pytest.mark.parametrize("text", ["1024x", "x768", "-1024", "1024*768", "big"])
def test_parse_resolution_errors(text):
    with pytest.raises(UnitError):
        units.parse_resolution(text)


@pytest.mark.parametrize(
    ("text", "value"), [("1:1", 1.0), ("2:1", 2.0), ("1:2", 0.5), ("0.5:1", 0.5)]
)
def test_parse_ratio(text, value):
    assert units.parse_ratio(text) == value


@pytest.mark.parametrize(
    ("text", "needle"), [("2", "`2:1`"), ("1:0", "divides by zero"), ("a:b", "not a ratio")]
)
def test_parse_ratio_errors(text, needle):
    with pytest.raises(UnitError) as info:
        units.parse_ratio(text)
    assert needle in info.value.message + info.value.help


@FAST
@given(st.floats(1e-12, 100.0, allow_nan=False))
def test_ratio_round_trip(value):
    assert units.parse_ratio(units.format_ratio(value)) == value


@FAST
@given(st.floats(0.0, 1.0, allow_nan=False))
def test_fraction_percent_round_trip(value):
    text = units.format_fraction_percent(value)
    assert text.endswith("%")
    assert units.parse_fraction_percent(text) == value


def test_fraction_percent_reads_like_people_write_it():
    assert units.parse_fraction_percent("5%") == 0.05
    assert units.format_fraction_percent(0.05) == "5%"
    assert units.format_fraction_percent(0.125) == "12.5%"
    with pytest.raises(UnitError) as info:
        units.parse_fraction_percent("0.05")
    assert "write `5%`" in info.value.help


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_round_trip(value):
    assert units.parse_float(units.format_number(value)) == value
    back = units.parse_number(units.format_number(value, keep_float=True))
    assert back == value and isinstance(back, float)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-4, "1e-4"),
        (5e-5, "5e-5"),
        (0.0357, "0.0357"),
        (16.0, "16"),
        (2.5e-4, "2.5e-4"),
        (1e20, "1e20"),
        (3, "3"),
    ],
)
def test_format_number_is_how_people_write_it(value, text):
    assert units.format_number(value) == text


@pytest.mark.parametrize(
    ("text", "value"), [("3000", 3000), ("-1", -1), ("1e-4", 1e-4), (".5", 0.5), ("2.", 2.0)]
)
def test_parse_number(text, value):
    assert units.parse_number(text) == value


@pytest.mark.parametrize("text", ["1e999", "nan", "inf", "1_000", "0x10", "1,5"])
def test_parse_float_rejects_what_is_not_a_finite_decimal(text):
    with pytest.raises(UnitError):
        units.parse_float(text)


def test_parse_int_rejects_fractions_with_a_clear_message():
    with pytest.raises(UnitError) as info:
        units.parse_int("2.5")
    assert "not a whole number" in info.value.message


def test_range_and_interval_units():
    assert units.parse_range("256..2048") == (256, 2048)
    with pytest.raises(UnitError):
        units.parse_range("256-2048")
    assert units.parse_interval_unit("epoch") == "epochs"
    assert units.parse_interval_unit("steps") == "steps"
    with pytest.raises(UnitError):
        units.parse_interval_unit("minutes")


def test_percent_keeps_percent_units():
    assert units.parse_percent("5%") == 5.0
    assert units.format_percent(2.5) == "2.5%"
