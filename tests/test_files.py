"""The one atomic-write helper every output goes through (files.atomic_output): a reader sees the old file
or folder or the new one, never half, and a failed write leaves nothing behind."""

import os

import pytest

from negalign.files import atomic_output, atomic_write_text


def test_a_file_is_replaced_whole_and_a_failed_write_leaves_the_old_one(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half of the ne")
            assert target.read_text() == "old"  # nothing visible before the rename
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and os.listdir(target.parent) == ["result.json"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(target.parent) == ["result.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_output(target, folder=True) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "deep").mkdir()
        (tmp / "deep" / "b.txt").write_text("2")
    assert sorted(p.name for p in target.rglob("*")) == ["a.txt", "b.txt", "deep"]
    with pytest.raises(ValueError):
        with atomic_output(target, folder=True) as tmp:
            (tmp / "c.txt").write_text("3")
            raise ValueError("save failed")
    assert sorted(os.listdir(tmp_path)) == ["model"] and (target / "a.txt").exists()
    with atomic_output(target, folder=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert os.listdir(target) == ["c.txt"]  # the old folder's files do not survive a replacement


def test_replace_false_keeps_what_another_process_finished_first(tmp_path):
    target = tmp_path / "converted"
    with atomic_output(target, folder=True, replace=False) as tmp:
        (tmp / "mine.txt").write_text("mine")
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")
    assert os.listdir(target) == ["theirs.txt"] and os.listdir(tmp_path) == ["converted"]
