"""The trainer: early stopping, best checkpoint, resume, results, information abundance."""

import json

import numpy as np
import pytest
import torch

import fastme.train.trainer as trainer
from fastme.data import make_synthetic
from fastme.models import build
from fastme.train import TrainConfig, evaluate, load_checkpoint, train
from fastme.train.trainer import ResumeError

DIMS = [4, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(3_000, field_dims=DIMS, min_count=0, interaction_scale=2.5)


def small_model(data, seed=0):
    torch.manual_seed(seed)
    return build("dnn", data.field_dims, 1, hidden_dim=16)


def config(tmp_path=None, **overrides):
    base = dict(
        epochs=3,
        batch_size=256,
        progress=False,
        verbose=False,
        out_dir=None if tmp_path is None else str(tmp_path),
    )
    base.update(overrides)
    return TrainConfig(**base)


def scripted_validation(monkeypatch, aucs):
    """Make validation return the given AUCs in turn; test evaluation stays real."""
    real = trainer.evaluate
    calls = iter(aucs)

    def fake(model, part, *args, **kwargs):
        result = real(model, part, *args, **kwargs)
        if part.name.endswith("/valid"):
            result["auc"] = next(calls)
        return result

    monkeypatch.setattr(trainer, "evaluate", fake)


def state_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_keeps_and_tests_the_best_epoch(data, tmp_path, monkeypatch):
    # best at epoch 2; 0.7 again is not a strict improvement; 3 bad epochs -> stop after 5
    scripted_validation(monkeypatch, [0.6, 0.7, 0.65, 0.7, 0.69, 0.99, 0.99])
    model = small_model(data)
    results = train(model, data, config(tmp_path, epochs=10, patience=3))
    assert (results["epochs"], results["best_epoch"], results["stopped_early"]) == (5, 2, True)
    assert results["best_val_auc"] == 0.7
    assert [h["val_auc"] for h in results["history"]] == [0.6, 0.7, 0.65, 0.7, 0.69]
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 2 and last["epoch"] == 5
    assert set(best) >= {"model", "optimizer", "epoch", "config"}
    # the model handed back holds the best epoch's weights, and the test score is theirs
    assert state_equal(model.state_dict(), best["model"])
    assert not state_equal(model.state_dict(), last["model"])
    test = evaluate(model, data.split()[2], torch.device("cpu"), 256)
    assert results["test_auc"] == test["auc"]


def test_best_model_is_kept_in_memory_without_out_dir(data, monkeypatch):
    scripted_validation(monkeypatch, [0.8, 0.5, 0.5])
    model = small_model(data)
    first_epoch = {}
    real = trainer._train_one_epoch

    def spy(model, *args, **kwargs):
        loss = real(model, *args, **kwargs)
        if not first_epoch:
            first_epoch.update({k: v.clone() for k, v in model.state_dict().items()})
        return loss

    monkeypatch.setattr(trainer, "_train_one_epoch", spy)
    results = train(model, data, config(epochs=3))
    assert results["best_epoch"] == 1 and results["epochs"] == 3
    assert state_equal(model.state_dict(), first_epoch)
    assert "results_path" not in results


def test_training_learns_and_writes_results(data, tmp_path):
    model = small_model(data)
    results = train(model, data, config(tmp_path, epochs=3, lr=1e-2))
    assert results["test_auc"] > 0.6
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "test_auc",
        "test_logloss",
        "best_val_auc",
        "epochs",
        "samples_per_s",
        "config",
        "history",
    ):
        assert key in on_disk
    assert on_disk["config"]["batch_size"] == 256 and on_disk["config"]["lr"] == 1e-2
    assert on_disk["data"]["rows"] == {"train": 2400, "valid": 300, "test": 300}
    assert on_disk["samples_per_s"] > 0 and on_disk["epochs"] == 3


@pytest.mark.parametrize(
    "shuffle, table_optimizer",
    [(False, "adam"), (True, "adam"), (True, "rowwise_adagrad"), (False, "lazy_adam")],
)
def test_resume_gives_the_same_result_as_an_uninterrupted_run(
    data, tmp_path, interrupt_epoch, shuffle, table_optimizer
):
    settings = dict(epochs=4, patience=4, shuffle=shuffle, seed=5, table_optimizer=table_optimizer)
    full_model = small_model(data)
    full = train(full_model, data, config(tmp_path / "full", **settings))

    interrupt_epoch(3)  # killed during epoch 3, after two saved epochs
    with pytest.raises(KeyboardInterrupt):
        train(small_model(data), data, config(tmp_path / "cut", **settings))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    resumed_model = small_model(data, seed=123)  # weights come from the checkpoint
    resumed = train(resumed_model, data, config(tmp_path / "cut", resume=True, **settings))

    assert resumed["test_auc"] == full["test_auc"]
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["epochs"] == 4
    for a, b in zip(full["history"], resumed["history"]):
        assert (a["train_loss"], a["val_auc"]) == (b["train_loss"], b["val_auc"])
    assert state_equal(full_model.state_dict(), resumed_model.state_dict())
    # resuming a finished run trains no more and reports the same
    again = train(small_model(data), data, config(tmp_path / "cut", resume=True, **settings))
    assert again["test_auc"] == full["test_auc"] and again["epochs"] == 4


def test_resume_refuses_other_settings_and_starts_fresh_without_checkpoint(data, tmp_path):
    train(small_model(data), data, config(tmp_path, epochs=1))
    with pytest.raises(ResumeError, match="lr"):
        train(small_model(data), data, config(tmp_path, epochs=2, lr=0.5, resume=True))
    with pytest.raises(ResumeError, match="table_optimizer 'adam' \\(now 'sgd'\\)"):
        train(
            small_model(data), data, config(tmp_path, epochs=2, table_optimizer="sgd", resume=True)
        )
    other = make_synthetic(2_000, field_dims=DIMS, min_count=0)
    with pytest.raises(ResumeError, match="different data"):
        train(small_model(other), other, config(tmp_path, epochs=2, resume=True))
    fresh = train(small_model(data), data, config(tmp_path / "new", epochs=1, resume=True))
    assert fresh["epochs"] == 1


def test_callbacks_add_to_the_history_and_results(data, tmp_path):
    epochs_seen, result_models = [], []

    def per_field(model, entry):
        return {"field_ia": [float(i) for i in range(model.num_fields)]}

    def on_epoch(model, record):
        epochs_seen.append(record["epoch"])
        return per_field(model, record)

    def on_result(model, results):
        result_models.append(model)
        assert "test_auc" in results  # called after the test
        return per_field(model, results)

    model = small_model(data)
    results = train(model, data, config(tmp_path, epochs=2), on_epoch=on_epoch, on_result=on_result)
    assert epochs_seen == [1, 2] and result_models == [model]
    assert results["field_ia"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(h["field_ia"] == results["field_ia"] for h in results["history"])
    assert json.loads((tmp_path / "results.json").read_text())["field_ia"] == results["field_ia"]

    def broken(model, entry):
        raise RuntimeError("boom")

    # a failing measurement is reported, and the finished run is not lost
    with pytest.warns(RuntimeWarning, match="boom"):
        results = train(small_model(data), data, config(epochs=1), on_result=broken)
    assert "field_ia" not in results and "boom" in results["callback_error"]
    assert results["test_auc"] > 0


def test_the_trainer_does_not_import_the_analysis():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(trainer))
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [n for n in names if n and n.startswith("fastme.analysis")]
    assert "importlib" not in names


def test_checkpoints_share_one_layout(data, tmp_path):
    train(small_model(data), data, config(tmp_path, epochs=1))
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    shared = {"model", "optimizer", "epoch", "config", "info", "data", "spec", "world_size"}
    assert set(best) == shared | {"val_auc"} and set(last) == shared | {"trainer"}
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("config", "info", "data", "spec", "world_size"):
        assert results[key] == json.loads(json.dumps(last[key]))


def test_regularization_loss_enters_the_objective(data):
    class Penalised(type(small_model(data))):
        """A parameter that only the regularisation loss reaches."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scale = torch.nn.Parameter(torch.ones(()))

        def regularization_loss(self):
            return self.scale**2

    torch.manual_seed(0)
    model = Penalised(data.field_dims, embed_dim=10, num_sets=1, hidden_dim=16)
    train(model, data, config(epochs=1))
    # 10 Adam steps of ~lr each towards 0
    assert model.scale.item() == pytest.approx(1 - 10 * 1e-3, abs=2e-3)


def test_config_and_input_errors(data):
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="out_dir"):
        TrainConfig(resume=True)
    with pytest.raises(ValueError, match="device"):
        train(small_model(data), data, config(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train(small_model(data), data, config(device="cuda"))
    wrong = build("dnn", [3, 3], 1, hidden_dim=4)
    with pytest.raises(ValueError, match="field_dims"):
        train(wrong, data, config())
    with pytest.raises(ValueError, match="too small"):
        tiny = make_synthetic(5, field_dims=DIMS, min_count=0)
        train(small_model(tiny), tiny, config())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_matches_the_cpu_protocol(data, tmp_path):
    results = train(small_model(data), data, config(tmp_path, device="cuda", epochs=2, lr=1e-2))
    assert results["device"].startswith("cuda") and results["test_auc"] > 0.6
    assert np.isfinite(results["test_logloss"])


def test_a_run_recorded_before_table_optimizers_keeps_its_identity_and_resumes(data, tmp_path):
    from fastme.train.checkpoint import run_identity, save

    def identity(**overrides):
        return run_identity("dnn", "se", 1, {}, "synthetic", {}, config(**overrides).as_dict())

    assert "table_optimizer" not in identity()["config"]  # the default: as before
    assert identity(table_optimizer="sgd")["config"]["table_optimizer"] == "sgd"
    train(small_model(data), data, config(tmp_path, epochs=1))
    last = load_checkpoint(tmp_path / "last.pt")
    for name in ("table_optimizer", "table_lr"):
        del last["config"][name]  # a last.pt of an earlier version
    save(last, tmp_path / "last.pt")
    resumed = train(small_model(data), data, config(tmp_path, epochs=2, resume=True))
    assert resumed["epochs"] == 2
