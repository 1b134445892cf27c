"""`fmt` keeps comments: beside their statement, or (if it was a dropped default) in its block."""

from __future__ import annotations

from lorafile.compiler.format import format_source

SOURCE = """\
# header: what this recipe is for
recipe "c"
base sdxl "/m"
dataset "/d" {
    # the folder has 40 images
    repeats 10  # 400 images per epoch
    kind style  # the default, so the formatter drops it
    # a note at the end of the block
}
output "/o"  # where it goes
train {
    steps 100
    lr 1e-4 cosine  # schedule
}
# closing words
"""

EXPECTED = """\
# header: what this recipe is for
recipe "c"

base sdxl "/m"

dataset "/d" {
    # the folder has 40 images
    repeats 10  # 400 images per epoch
    # a note at the end of the block
    # the default, so the formatter drops it
}

train {
    steps 100
    lr 1e-4 cosine  # schedule
}

output "/o"  # where it goes
# closing words
"""


def test_comments_follow_their_statements():
    assert format_source(SOURCE) == EXPECTED


def test_formatting_with_comments_is_idempotent():
    assert format_source(EXPECTED) == EXPECTED


def test_hash_inside_a_string_is_not_a_comment():
    text = 'recipe "a # b"\n\nbase sdxl "/m"\n\ndataset "/d"\n\ntrain {\n    steps 1\n}\n\noutput "/o"\n'
    assert format_source(text) == text


def test_comment_of_a_dropped_block_moves_to_the_end_of_the_file():
    text = (
        'recipe "x"\nbase sdxl "/m"\ndataset "/d"\ntrain {\n    steps 1\n}\noutput "/o"\n'
        "hardware {\n    gpus 1  # one card\n}\n"
    )
    assert format_source(text).endswith('output "/o"\n# one card\n')


def test_comment_in_a_dropped_block_moves_above_its_statement():
    text = (
        'recipe "x"\nbase sdxl "/m"\ndataset "/d" {\n    kind style  # the default\n}\n'
        'train {\n    steps 1\n}\noutput "/o"\n'
    )
    formatted = format_source(text)
    assert '# the default\ndataset "/d"\n' in formatted
    assert format_source(formatted) == formatted


def test_comment_in_an_empty_block_goes_above_it():
    text = (
        'recipe "x"\nbase sdxl "/m"\ndataset "/d"\ntrain {\n    steps 1\n}\noutput "/o"\n'
        "passthrough kohya {\n    # nothing yet\n}\n"
    )
    formatted = format_source(text)
    assert formatted.endswith("# nothing yet\npassthrough kohya {}\n")
    assert format_source(formatted) == formatted
