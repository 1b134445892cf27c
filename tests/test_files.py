"""lorafile.files: every write replaces the target whole or leaves it alone."""

from __future__ import annotations

import os

import pytest

from lorafile.files import atomic_path, write_text_atomic


def test_atomic_path_replaces_the_target_on_success(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert os.stat(target).st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]


def test_atomic_path_keeps_the_old_file_and_removes_the_temp_on_failure(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    for error in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise error
        assert target.read_bytes() == b"old"
        assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    write_text_atomic(target, "text\n")
    assert target.read_text() == "text\n" and os.stat(target).st_mode & 0o777 == 0o600


def test_writes_go_through_a_symlink(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"


def test_real_path_follows_links_and_leaves_a_loop(tmp_path):
    from lorafile.files import real_path

    (tmp_path / "target").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert real_path(tmp_path / "link") == (tmp_path / "target").resolve()
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert real_path(tmp_path / "a").name in ("a", "b")  # no RuntimeError: the caller decides


def test_file_in_the_way_of_a_folder(tmp_path):
    from lorafile.files import file_in_the_way

    (tmp_path / "file").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert file_in_the_way(tmp_path / "new" / "deeper") is None
    assert file_in_the_way(tmp_path) is None
    assert file_in_the_way(tmp_path / "file") == tmp_path / "file"
    assert file_in_the_way(tmp_path / "file" / "sub" / "x") == tmp_path / "file"
    assert file_in_the_way(tmp_path / "loop") == tmp_path / "loop"
