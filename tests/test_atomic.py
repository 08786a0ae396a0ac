"""fastme._atomic: an output appears whole or not at all, and a failure leaves the old file."""

import os

import pytest

from fastme._atomic import replace_on_success, write_text


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "preds.csv"
    target.write_text("old\n")
    with replace_on_success(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".csv" and tmp != target
        tmp.write_text("new\n")
        assert target.read_text() == "old\n"  # untouched until the block succeeds
    assert target.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["preds.csv"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "preds.csv"
    target.write_text("101 lines\n")
    with pytest.raises(RuntimeError, match="boom"):
        with replace_on_success(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "101 lines\n"
    assert sorted(os.listdir(tmp_path)) == ["preds.csv"]


def test_failure_without_an_old_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with replace_on_success(tmp_path / "model.onnx"):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_new_file_gets_ordinary_permissions_and_old_mode_is_kept(tmp_path):
    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.json", "{}")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "b.json").write_text("x")
        os.chmod(tmp_path / "b.json", 0o600)
        write_text(tmp_path / "b.json", "{}")
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)
