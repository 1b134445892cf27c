"""The helpers that quote a library's exception inside a diagnostic."""

from __future__ import annotations

from lorafile.compiler.diagnostics import error_summary, first_line


def test_first_line_keeps_only_the_message_up_to_its_first_line_break():
    assert first_line(ValueError("bad kernel\n(a long compiler log)")) == "bad kernel"
    assert first_line(RuntimeError()) == "RuntimeError"


def test_error_summary_names_the_type_and_the_first_line():
    err = RuntimeError("  cannot build this kernel\n(a long compiler log)")
    assert error_summary(err) == "RuntimeError: cannot build this kernel"


def test_error_summary_of_an_exception_without_a_message_names_its_type_once():
    assert error_summary(RuntimeError()) == "RuntimeError"
    assert error_summary(KeyError("")) == "KeyError: ''"  # a KeyError quotes its key
