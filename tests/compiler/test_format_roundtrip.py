"""Property: for every valid Recipe r, parse(format(r)) == r, and format is stable.

black's fuzz pattern (style-anchors.md 4c): explicit strategies (tests/strategies.py),
derandomized so CI is deterministic.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from lorafile.compiler.format import format_recipe
from lorafile.compiler.parse import parse_recipe, parse_recipe_with_positions
from lorafile.spec import models as m
from strategies import recipes


@settings(
    max_examples=500,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(recipes())
def test_parse_of_format_is_identity(recipe):
    text = format_recipe(recipe)
    back, smap = parse_recipe_with_positions(text)
    assert back == recipe
    assert format_recipe(back) == text
    # every top-level field that was written has a position
    assert ("name",) in smap and ("train",) in smap


def test_format_of_defaults_is_short():
    text = (
        'recipe "x"\n\nbase sdxl "/m"\n\ndataset "/d"\n\ntrain {\n    steps 10\n}\n\noutput "/o"\n'
    )
    assert format_recipe(parse_recipe(text)) == text


# Fields whose type allows only their default value: nothing to cover.
SINGLE_VALUED = {("Base", "family"), ("Save", "format")}


def spec_classes() -> list[type[m.Spec]]:
    return [
        c
        for c in vars(m).values()
        if isinstance(c, type) and issubclass(c, m.Spec) and c is not m.Spec
    ]


def varied_fields(model: m.Spec, seen: set) -> None:
    """Record (class, field) for every field of `model` (and nested models) off its default."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if info.is_required() or value != info.default:
            seen.add((type(model).__name__, name))
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, m.Spec):
                varied_fields(item, seen)


def test_strategies_cover_every_field():
    """recipes() sets every field of every model to a non-default value somewhere."""
    seen: set = set()

    @settings(
        max_examples=300,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(recipes())
    def collect(recipe):
        varied_fields(recipe, seen)

    collect()
    expected = {(c.__name__, f) for c in spec_classes() for f in c.model_fields}
    assert expected - SINGLE_VALUED - seen == set()
