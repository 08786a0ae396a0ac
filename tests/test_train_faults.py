"""The trainer under faults: one-sample batches, divergence, resumes that do not fit, damaged
checkpoints, two runs in one directory, time across resumes."""

import json
import time

import warnings

import pytest
import torch

import fastme.train.trainer as trainer
from fastme._lock import LockedError
from fastme.data import make_synthetic
from fastme.models import build
from fastme.train import TrainConfig, load_checkpoint, train
from fastme.train.batches import batch_bounds
from fastme.train.trainer import CheckpointError, ResumeError, TrainingWarning

DIMS = [4, 8, 16, 32]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(1_000, field_dims=DIMS, min_count=0, interaction_scale=2.5)


def model_for(data, seed=0, **options):
    torch.manual_seed(seed)
    return build("dnn", data.field_dims, 1, **{"hidden_dim": 8, **options})


def config(out=None, **overrides):
    return TrainConfig(
        **{
            "epochs": 1,
            "batch_size": 128,
            "progress": False,
            "verbose": False,
            "out_dir": None if out is None else str(out),
            **overrides,
        }
    )


def test_a_last_batch_of_one_sample_joins_the_batch_before(data):
    assert batch_bounds(801, 100, merge_single_tail=True) == [
        0,
        100,
        200,
        300,
        400,
        500,
        600,
        700,
        801,
    ]
    assert batch_bounds(801, 100)[-2:] == [800, 801]
    assert batch_bounds(1, 100, merge_single_tail=True) == [0, 1]
    # 800 training rows in batches of 799: the second batch would hold one sample (BatchNorm)
    results = train(model_for(data), data, config(batch_size=799))
    assert results["epochs"] == 1 and results["history"][0]["samples_per_s"] > 0


def test_a_non_finite_loss_stops_with_a_hint(data, monkeypatch):
    monkeypatch.setattr(
        trainer.F,
        "binary_cross_entropy_with_logits",
        lambda logits, y: (logits * float("nan")).mean(),
    )
    with pytest.raises(FloatingPointError, match="not finite.*smaller lr"):
        train(model_for(data), data, config())


def test_a_diverged_run_is_marked_and_warned_about(data):
    with pytest.warns(TrainingWarning, match="diverg"):
        results = train(model_for(data), data, config(lr=1e3, epochs=2))
    assert results["diverged"] and results["warnings"]
    fine = train(model_for(data), data, config(lr=1e-2))
    assert not fine["diverged"] and fine["warnings"] == []


def test_an_overfitting_epoch_is_not_called_divergence(data, monkeypatch):
    """Validation log loss far above the constant's while the training loss is below it is
    overfitting after the best epoch, which early stopping handles: no "try a smaller lr"."""
    evaluate = trainer.Trainer.evaluate
    calls = []

    def overfit_after_first(self, rows):
        result = evaluate(self, rows)
        calls.append(1)
        if len(calls) > 1 and rows is self.valid_set:  # epochs after the first look overfit
            result = {**result, "logloss": 10 * self.constant_logloss}
        return result

    monkeypatch.setattr(trainer.Trainer, "evaluate", overfit_after_first)
    monkeypatch.setattr(trainer.Trainer, "train_pass", lambda self, rows, desc: 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        results = train(model_for(data), data, config(epochs=3, patience=5))
    assert results["epochs"] == 3 and results["warnings"] == [] and not results["diverged"]


def test_resume_names_what_differs(data, tmp_path):
    info = {"model": "dnn", "mode": "se", "scale": 1, "model_options": {"hidden_dim": 8}}
    train(model_for(data), data, config(tmp_path), info=info)
    wider = model_for(data, hidden_dim=16)
    with pytest.raises(
        ResumeError,
        match=r"model options \{'hidden_dim': 8\} \(now "
        r"\{'hidden_dim': 16\}\)",
    ):
        train(wider, data, config(tmp_path, resume=True, epochs=2))
    del wider.spec  # a model made by hand: its weights' shapes are compared
    with pytest.raises(
        ResumeError,
        match=r"do not fit this model .*is \[1, 8, 40\] in the "
        r"checkpoint, \[1, 16, 40\] here",
    ):
        train(wider, data, config(tmp_path, resume=True, epochs=2))
    torch.manual_seed(0)
    multi = build("dnn", data.field_dims, 1, multi=True, hidden_dim=8)  # the same shapes
    with pytest.raises(ResumeError, match="another model.*model mode 'se' \\(now 'me'\\)"):
        train(multi, data, config(tmp_path, resume=True, epochs=2), info=info)
    same_shape = make_synthetic(1_000, seed=1, field_dims=DIMS, min_count=0)
    with pytest.raises(ResumeError, match="different data .*fingerprint"):
        train(model_for(same_shape), same_shape, config(tmp_path, resume=True, epochs=2))
    resumed = train(model_for(data), data, config(tmp_path, resume=True, epochs=2), info=info)
    assert resumed["epochs"] == 2


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not_a_checkpoint"])
def test_a_damaged_checkpoint_is_named(data, tmp_path, damage):
    train(model_for(data), data, config(tmp_path))
    last = tmp_path / "last.pt"
    raw = last.read_bytes()
    if damage == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(2)}, last)
    else:
        last.write_bytes(
            {"empty": b"", "truncated": raw[: len(raw) // 2], "garbage": b"\x80\x02garbage" * 20}[
                damage
            ]
        )
    with pytest.raises(CheckpointError, match=str(last)):
        load_checkpoint(last)
    with pytest.raises(CheckpointError, match=str(last)):
        train(model_for(data), data, config(tmp_path, resume=True, epochs=2))


def test_resume_without_a_checkpoint_says_so(data, tmp_path, capsys):
    results = train(model_for(data), data, config(tmp_path / "new", resume=True, verbose=True))
    assert results["epochs"] == 1
    assert "no " + str(tmp_path / "new" / "last.pt") + " to resume" in capsys.readouterr().out


def test_a_second_run_into_a_busy_directory_is_refused(data, tmp_path, run_lock_holder):
    holder = run_lock_holder(tmp_path)
    with pytest.raises(
        LockedError, match=f"run directory {tmp_path} is in use by pid {holder.pid}"
    ):
        train(model_for(data), data, config(tmp_path))
    assert not (tmp_path / "results.json").exists()
    holder.kill()
    holder.wait()
    assert train(model_for(data), data, config(tmp_path))["epochs"] == 1  # free again


def test_out_dir_problems_are_found_before_training(data, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        train(model_for(data), data, config(afile))


def test_wall_time_covers_every_session(data, tmp_path, monkeypatch):
    real = trainer._train_one_epoch

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_one_epoch", slow)
    first = train(model_for(data), data, config(tmp_path, epochs=2, patience=5))
    resumed = train(model_for(data), data, config(tmp_path, epochs=3, patience=5, resume=True))
    again = train(model_for(data), data, config(tmp_path, epochs=3, patience=5, resume=True))
    assert first["wall_time_s"] >= first["train_time_s"] >= 0.6
    assert resumed["train_time_s"] >= 0.9
    assert resumed["wall_time_s"] >= resumed["train_time_s"]
    # resuming a finished run trains no more and reports the run's total, not its own seconds
    assert again["train_time_s"] == resumed["train_time_s"]
    assert again["wall_time_s"] >= again["train_time_s"]
    assert (
        json.loads((tmp_path / "results.json").read_text())["wall_time_s"] == again["wall_time_s"]
    )


def test_a_released_lock_leaves_no_file_and_removes_the_directories_it_made(tmp_path):
    from fastme._atomic import make_dirs
    from fastme._lock import file_lock

    where = tmp_path / "a" / "b"
    with file_lock(where / ".lock", "x", prepare=lambda: make_dirs(where)):
        assert (where / ".lock").is_file()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with file_lock(tmp_path / "kept" / ".lock", "x", prepare=lambda: make_dirs(tmp_path / "kept")):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]  # not made by the lock: kept


def test_a_lock_file_deleted_by_its_holder_is_never_believed_held(tmp_path, monkeypatch):
    """The race the holder's delete opens: we open the old file, its holder deletes it and lets
    go, a third process makes and locks a new file of that name; then our flock succeeds on the
    deleted file. We must see that and find the new file locked."""
    import fcntl
    import os
    import types

    import fastme._lock as lock

    path = tmp_path / ".lock"
    path.write_text("")
    third = []

    def flock(handle, op):
        if not third:  # between our open and our flock: the file is replaced and locked
            os.unlink(path)
            third.append(open(path, "w"))  # noqa: SIM115 - held until the test ends
            fcntl.flock(third[0], fcntl.LOCK_EX)
        return fcntl.flock(handle, op)

    monkeypatch.setattr(
        lock,
        "fcntl",
        types.SimpleNamespace(
            flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN
        ),
    )
    try:
        with pytest.raises(LockedError, match="x is in use"), lock.file_lock(path, "x"):
            pass
    finally:
        third[0].close()


def test_a_run_that_fails_leaves_no_directory_and_a_finished_one_no_lock(
    data, tmp_path, monkeypatch
):
    def fails(*args, **kwargs):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as m:
        m.setattr(trainer, "_train_one_epoch", fails)
        with pytest.raises(RuntimeError, match="out of memory"):
            train(model_for(data), data, config(tmp_path / "runs" / "r"))
    assert list(tmp_path.iterdir()) == []  # neither runs/r nor runs/ stays
    results = train(model_for(data), data, config(tmp_path / "runs" / "r"))
    assert sorted(p.name for p in (tmp_path / "runs" / "r").iterdir()) == [
        "best.pt",
        "last.pt",
        "results.json",
    ]
    assert results["checkpoint_path"] == str(tmp_path / "runs" / "r" / "best.pt")


def test_a_failed_checkpoint_write_keeps_the_old_file_and_leaves_no_debris(
    data, tmp_path, monkeypatch
):
    train(model_for(data), data, config(tmp_path))
    old = {name: (tmp_path / name).read_bytes() for name in ("best.pt", "last.pt")}
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save({"half": 1}, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        train(model_for(data), data, config(tmp_path, resume=True, epochs=2))
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "results.json"]
