"""The paper's experiments and reports: toy experiment, scaling sweep, checkpoint analysis, plots."""

import json

import numpy as np
import pytest
import torch

from fastme.analysis.plots import plot_toy
from fastme.analysis.report import analyze_model
from fastme.analysis.toy import run_toy
from fastme.cli import main
from fastme.models import build

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIELD_DIMS = [4, 6, 9, 12]


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_toy_shows_the_papers_direction():
    result = run_toy(iterations=300, seeds=(0, 1), record_every=50)
    small, large = result["runs"]["3"], result["runs"]["100"]
    assert small["iterations"] == [0, 50, 100, 150, 200, 250, 300]
    # same E1 at the start (paired seeds), and the training loss goes down
    assert small["ia"][0][0] == large["ia"][0][0]
    assert all(loss[-1] < loss[0] for loss in small["loss"] + large["loss"])
    # interacting with the low-abundance E3 (D3 = 3 < K) collapses E1 more, seed by seed
    for s in range(2):
        assert small["ia"][s][-1] < large["ia"][s][-1] - 0.1
        assert small["ia"][s][-1] < small["ia"][s][0] - 0.3
    assert small["final_ia_mean"] == pytest.approx(np.mean([r[-1] for r in small["ia"]]))
    with pytest.raises(ValueError, match="iterations"):
        run_toy(iterations=0)


def test_toy_plot_and_cli(tmp_path):
    result = run_toy(iterations=20, seeds=(0,), record_every=10)
    png = plot_toy(result, tmp_path / "toy")
    assert _is_png(png)
    assert json.loads((tmp_path / "toy.json").read_text())["runs"]["3"]["iterations"] == [0, 10, 20]
    out = tmp_path / "cli"
    assert main(["experiment", "toy", "--iterations", "10", "--seeds", "0", "--d3", "3", "50",
                 "--out", str(out)]) == 0
    saved = json.loads((out / "toy.json").read_text())
    assert set(saved["runs"]) == {"3", "50"} and _is_png(out / "toy.png")
    assert main(["experiment", "toy", "--iterations", "0", "--out", str(out)]) == 2


@pytest.mark.parametrize("name,multi,scale", [("dcnv2", True, 2), ("dcnv2", False, 2),
                                              ("dnn", False, 1)])
def test_analyze_model_writes_report(tmp_path, name, multi, scale):
    torch.manual_seed(0)
    model = build(name, [3, 50, 200], scale, multi, backend="reference", hidden_dim=8)
    x = np.array([[0, 1, 2], [2, 49, 199], [1, 1, 0]])
    result = analyze_model(model, tmp_path, field_names=["a", "b", "c"], seen_rows=x, title="t")
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["rows_analysed"] == [3, 2, 3] and saved["seen_only"]
    assert len(saved["field_ia"]) == 3
    for fig in result["figures"].values():
        assert _is_png(fig)
        assert (tmp_path / fig).with_suffix(".json").is_file()  # the figure's data
    expected = {"field_ia", "spectra"}
    if name == "dcnv2":
        expected |= {"sub_embedding", "interaction_pattern"}
        assert np.asarray(saved["interaction_pattern"]).shape == (model.num_sets, 3, 3)
    if multi or scale > 1:
        expected.add("diversity")
        assert saved["diversity"]["num_sets"] == 2
    else:
        assert saved["diversity"] is None  # an SE base model has nothing to split
    assert set(result["figures"]) == expected


# -- the built-in data's planted collapse mechanism (generator v2) ------------------------------
def test_v2_generator_plants_low_cardinality_interactions():
    from fastme.data.synthetic import (LOW_CARDINALITY, collapse_field_dims, make_synthetic,
                                       synthetic_teacher)
    from fastme.train.metrics import roc_auc

    dims = collapse_field_dims()
    low = [i for i, d in enumerate(dims) if d < LOW_CARDINALITY]
    rich = [i for i, d in enumerate(dims) if d >= LOW_CARDINALITY]
    assert [dims[i] for i in low] == [2, 3, 4, 5] and len(rich) == 12
    assert min(dims[i] for i in rich) == 20 and max(dims) == 2_000
    teacher = synthetic_teacher(seed=0)
    ranks = dict(zip(teacher.pairs, teacher.pair_ranks))
    # every rich field interacts with every low one, with the rank its few values allow ...
    for r in rich:
        for lo in low:
            assert ranks[(lo, r)] == dims[lo] - 1
    # ... and with two other rich fields at full latent rank; low fields never with each other
    assert all(sum(r in p for p in ranks if p[0] in rich) == 4 for r in rich)
    assert not any(i in low and j in low for i, j in ranks)

    x = teacher.sample_x(20_000)
    y = teacher.sample_labels(x)
    first, pairs = teacher.logits(x, parts=True)
    assert roc_auc(y, first + pairs) - roc_auc(y, first) > 0.15  # labels need the interactions
    # a (low, rich) pair term is a function of both fields that no single field explains: its
    # share of variance explained by either field's values alone is ~0
    lo, r = low[0], rich[0]
    k = teacher.pairs.index((lo, r))
    term = (teacher._left[k][x[:, lo]] * teacher._right[k][x[:, r]]).sum(1).astype(np.float64)

    def explained(*cols):
        keys = np.unique(np.stack([x[:, c] for c in cols], 1), axis=0, return_inverse=True)[1]
        keys = keys.ravel()
        means = np.bincount(keys, term) / np.bincount(keys)
        return means[keys].var() / term.var()

    assert explained(lo) < 0.01 and explained(r) < 0.05
    assert explained(lo, r) == pytest.approx(1.0)

    a, b = make_synthetic(3_000, seed=5), make_synthetic(3_000, seed=5)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.y, make_synthetic(3_000, seed=6).y)
    assert a.field_names[:5] == ["L1", "L2", "L3", "L4", "R1"] and a.info["generator"] == "v2"
    old = make_synthetic(500, generator="v1")  # the earlier Criteo-like data stays reachable
    assert old.num_fields == 39 and old.field_names[0] == "I1"
    with pytest.raises(ValueError, match="generator"):
        make_synthetic(10, generator="v3")
    with pytest.raises(ValueError, match="v1 option"):
        make_synthetic(10, num_pairs=3)


# -- scaling sweep (needs the trainer) ---------------------------------------------------------
def _tiny_data():
    data = pytest.importorskip("fastme.data")
    return data.make_synthetic(num_samples=400, seed=0, field_dims=FIELD_DIMS)


TRAIN = dict(epochs=1, batch_size=128, device="cpu", progress=False, verbose=False)


def test_scale_aggregates_over_seeds(tmp_path):
    pytest.importorskip("fastme.train")
    from fastme.analysis.scale import run_scale

    calls = []

    def fake_train(model, data, config, info=None):  # deterministic stand-in for train()
        calls.append((info["mode"], info["scale"], config.seed))
        return {"test_auc": 0.6 + 0.01 * info["scale"] + (0.02 if info["mode"] == "me" else 0)
                + 0.001 * config.seed}

    summary = run_scale("dnn", _tiny_data(), scales=(1, 3), seeds=(0, 2), train_options=TRAIN,
                        model_options={"hidden_dim": 8}, backend="reference", out_dir=tmp_path,
                        train_fn=fake_train, log=lambda *_: None)
    # scale by scale, SE before ME: an interrupted sweep has both curves up to a scale
    assert calls == [("se", 1, 0), ("se", 1, 2), ("se", 3, 0), ("se", 3, 2), ("me", 3, 0),
                     ("me", 3, 2)]
    assert summary["se"]["1"] == summary["me"]["1"]  # the shared base point
    assert summary["me"]["3"]["test_auc_mean"] == pytest.approx(0.6 + 0.03 + 0.02 + 0.001)
    assert summary["me"]["3"]["test_auc_std"] == pytest.approx(0.001)
    assert len(summary["se"]["3"]["field_ia_mean"]) == len(FIELD_DIMS)
    # IA relative to a random matrix of the same shape [D_i, M*K]: untrained tables are as
    # abundant as random ones, whatever the scale and mode
    for mode, scale in (("se", 1), ("se", 3), ("me", 3)):
        entry = summary[mode][str(scale)]
        np.testing.assert_allclose(entry["field_ia_over_random_mean"],
                                   np.divide(entry["field_ia_mean"], entry["field_ia_random"]))
        assert 0.85 < entry["mean_field_ia_over_random_mean"] < 1.15
    for key in ("auc", "ia", "field_ia"):
        assert _is_png(summary["figures"][key])
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert saved["me"]["3"]["seeds"] == [0, 2]
    # the results page renders these numbers
    from fastme.analysis.results import render

    page = render(saved, run_toy(iterations=20, seeds=(0,), record_every=10))
    me3 = saved["me"]["3"]
    assert f"{me3['test_auc_mean']:.4f} ± {me3['test_auc_std']:.4f}" in page
    assert "| 3x |" in page and "| ME 3x |" in page and "| D3 |" in page
    # a second call reuses the finished runs
    calls.clear()
    run_scale("dnn", _tiny_data(), scales=(1, 3), seeds=(0, 2), train_options=TRAIN,
              model_options={"hidden_dim": 8}, backend="reference", out_dir=tmp_path,
              train_fn=fake_train, log=lambda *_: None)
    assert calls == []


def test_scale_and_analyze_cli_with_the_trainer(tmp_path):
    pytest.importorskip("fastme.train")
    out = tmp_path / "sweep"
    common = ["--synthetic-samples", "400", "--data-option", f"field_dims={FIELD_DIMS}"]
    assert main(["experiment", "scale", "--model", "dcnv2", "--scales", "1", "2", "--seeds", "0",
                 "--epochs", "1", "--batch-size", "128", "--device", "cpu", "--backend",
                 "reference", "--model-option", "hidden_dim=8", "--no-progress", "--seen-only",
                 "--out", str(out), *common]) == 0
    summary = json.loads((out / "scale.json").read_text())
    assert set(summary["se"]) == {"1", "2"} and set(summary["me"]) == {"1", "2"}
    assert 0.0 <= summary["me"]["2"]["test_auc_mean"] <= 1.0
    run = out / "runs" / "dcnv2-mex2-seed0"
    assert (run / "best.pt").is_file()
    # analyze the ME run's checkpoint, on the rows its training split saw
    assert main(["analyze", str(run), "--data", "synthetic", "--seen-only", *common]) == 0
    report = json.loads((run / "analysis" / "analysis.json").read_text())
    assert report["num_sets"] == 2 and report["seen_only"]
    assert len(report["sub_embedding"]["per_set"]) == 2
    assert main(["analyze", str(tmp_path / "missing")]) == 2
