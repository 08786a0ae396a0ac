"""fastme._atomic: an output appears whole or not at all, and a failure leaves the old file."""

import os
from pathlib import Path

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


def test_directories_made_for_an_output_that_failed_are_removed(tmp_path):
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "new" / "deeper" / "p.csv"
    with pytest.raises(RuntimeError), replace_on_success(target, make_parents=True) as tmp:
        tmp.write_text("partial")
        raise RuntimeError
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []
    write_text(tmp_path / "kept" / "new" / "p.csv", "x", make_parents=True)
    assert (tmp_path / "kept" / "new" / "p.csv").read_text() == "x"


def test_make_dirs_reports_only_what_it_created_and_remove_dirs_stops_at_a_used_one(tmp_path):
    from fastme._atomic import make_dirs, remove_dirs

    created = make_dirs(tmp_path / "a" / "b" / "c")
    assert created == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert make_dirs(tmp_path / "a" / "b") == []
    (tmp_path / "a" / "other").write_text("someone else's")
    remove_dirs(created)
    assert sorted(os.listdir(tmp_path / "a")) == ["other"]


def test_a_plot_that_fails_keeps_the_old_figure(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from fastme.analysis.plots import plot_bars

    png = plot_bars({"a": 1.0, "b": 2.0}, tmp_path / "bars.png", "t", "y")
    old = png.read_bytes()

    def broken(self, fname, **kwargs):
        Path(fname).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_bars({"a": 3.0}, tmp_path / "bars.png", "t", "y")
    assert png.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["bars.json", "bars.png"]
