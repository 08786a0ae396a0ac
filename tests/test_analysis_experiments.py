"""The paper's experiments and reports: toy run, scaling sweep, checkpoint analysis, plots."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fastme.analysis.plots import plot_toy
from fastme.experiments.report import analyze_model, summary_lines
from fastme.experiments.toy import run_toy
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
    assert (
        main(
            [
                "experiment",
                "toy",
                "--iterations",
                "10",
                "--seeds",
                "0",
                "--d3",
                "3",
                "50",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    saved = json.loads((out / "toy.json").read_text())
    assert set(saved["runs"]) == {"3", "50"} and _is_png(out / "toy.png")
    assert main(["experiment", "toy", "--iterations", "0", "--out", str(out)]) == 2


@pytest.mark.parametrize(
    "name,multi,scale", [("dcnv2", True, 2), ("dcnv2", False, 2), ("dnn", False, 1)]
)
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
    from fastme.data.synthetic import (
        LOW_CARDINALITY,
        collapse_field_dims,
        make_synthetic,
        synthetic_teacher,
    )
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
    from fastme.experiments.scale import run_scale

    calls = []

    def fake_train(model, data, config, info=None):  # deterministic stand-in for train()
        calls.append((info["mode"], info["scale"], config.seed))
        return {
            "test_auc": 0.6
            + 0.01 * info["scale"]
            + (0.02 if info["mode"] == "me" else 0)
            + 0.001 * config.seed
        }

    summary = run_scale(
        "dnn",
        _tiny_data(),
        scales=(1, 3),
        seeds=(0, 2),
        train_options=TRAIN,
        model_options={"hidden_dim": 8},
        backend="reference",
        out_dir=tmp_path,
        train_fn=fake_train,
        log=lambda *_: None,
    )
    # scale by scale, SE before ME: an interrupted sweep has both curves up to a scale
    assert calls == [
        ("se", 1, 0),
        ("se", 1, 2),
        ("se", 3, 0),
        ("se", 3, 2),
        ("me", 3, 0),
        ("me", 3, 2),
    ]
    assert summary["se"]["1"] == summary["me"]["1"]  # the shared base point
    assert summary["me"]["3"]["test_auc_mean"] == pytest.approx(0.6 + 0.03 + 0.02 + 0.001)
    assert summary["me"]["3"]["test_auc_std"] == pytest.approx(0.001)
    assert len(summary["se"]["3"]["field_ia_mean"]) == len(FIELD_DIMS)
    # IA relative to a random matrix of the same shape [D_i, M*K]: untrained tables are as
    # abundant as random ones, whatever the scale and mode
    for mode, scale in (("se", 1), ("se", 3), ("me", 3)):
        entry = summary[mode][str(scale)]
        np.testing.assert_allclose(
            entry["field_ia_over_random_mean"],
            np.divide(entry["field_ia_mean"], entry["field_ia_random"]),
        )
        assert 0.85 < entry["mean_field_ia_over_random_mean"] < 1.15
        if scale > 1:  # untrained sets (or SE chunks) are as diverse as random tables
            assert entry["diversity_mean"] == pytest.approx(entry["diversity_random"], rel=0.15)
    assert "diversity_mean" not in summary["se"]["1"]
    for key in ("auc", "ia", "field_ia"):
        assert _is_png(summary["figures"][key])
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert saved["me"]["3"]["seeds"] == [0, 2]
    # the results page renders these numbers
    from fastme.experiments.results import render

    page = render(saved, run_toy(iterations=20, seeds=(0,), record_every=10))
    me3 = saved["me"]["3"]
    assert f"{me3['test_auc_mean']:.4f} ± {me3['test_auc_std']:.4f}" in page
    assert "| 3x |" in page and "| ME 3x |" in page and "| D3 |" in page
    assert f"{me3['diversity_mean']:.3f} ± {me3['diversity_std']:.3f}" in page
    assert "**What these numbers support**" in page and "Diversity between sets at 3x" in page
    # a second call reuses the finished runs
    calls.clear()
    run_scale(
        "dnn",
        _tiny_data(),
        scales=(1, 3),
        seeds=(0, 2),
        train_options=TRAIN,
        model_options={"hidden_dim": 8},
        backend="reference",
        out_dir=tmp_path,
        train_fn=fake_train,
        log=lambda *_: None,
    )
    assert calls == []
    # the same run by fastme train's rule: another backend or device is the same run, ...
    run_scale(
        "dnn",
        _tiny_data(),
        scales=(1, 3),
        seeds=(0, 2),
        train_options={**TRAIN, "device": "auto"},
        model_options={"hidden_dim": 8},
        backend="auto",
        out_dir=tmp_path,
        train_fn=fake_train,
        log=lambda *_: None,
    )
    assert calls == []
    # ... another learning rate is not
    run_scale(
        "dnn",
        _tiny_data(),
        scales=(1,),
        seeds=(0,),
        train_options={**TRAIN, "lr": 1e-2},
        model_options={"hidden_dim": 8},
        backend="reference",
        out_dir=tmp_path,
        train_fn=fake_train,
        log=lambda *_: None,
    )
    assert calls == [("se", 1, 0)]


def _sweep(se_auc: dict, me_auc: dict, se_ia=0.6, me_ia=0.7) -> dict:
    """A scale summary from per-seed test AUCs {scale: [auc per seed]} (IA / random fixed)."""

    def entry(aucs, ia):
        return {
            "test_auc": aucs,
            "test_auc_mean": float(np.mean(aucs)),
            "test_auc_std": float(np.std(aucs)),
            "mean_field_ia_over_random_mean": ia,
        }

    return {
        "scales": sorted(se_auc),
        "se": {str(s): entry(a, se_ia) for s, a in se_auc.items()},
        "me": {
            str(s): entry(a, me_ia if s > 1 else se_ia) for s, a in {**se_auc, **me_auc}.items()
        },
    }


def test_scale_conclusion_states_what_the_numbers_support():
    from fastme.experiments.scale import conclusion

    base = [0.700, 0.702, 0.698]
    # both halves: ME above SE at 10x by more than the spread, SE flat from 4x, ME rising
    both = conclusion(
        _sweep(
            {1: base, 4: [0.710, 0.712, 0.708], 10: [0.709, 0.711, 0.710]},
            {4: [0.711, 0.713, 0.709], 10: [0.720, 0.722, 0.718]},
        )
    )
    assert both["ia_half"] and both["auc_half"]
    assert both["top"] == 10 and both["margin"] == pytest.approx(0.0100)
    assert both["se_trend"] == "is flat" and both["me_trend"] == "rises"
    assert "both halves" in both["lines"][-1]
    assert "more than the larger seed std 0.0016" in both["lines"][1]
    # a gap within the seed spread is said to be one the data cannot separate
    tie = conclusion(_sweep({1: base, 4: [0.710, 0.720, 0.700]}, {4: [0.712, 0.722, 0.702]}))
    assert tie["auc_half"] is False and "cannot separate" in tie["lines"][1]
    assert tie["lines"][-1].startswith("Conclusion: only the IA half")
    # SE still rising between the two largest scales: no saturation, whatever the margin
    rising = conclusion(
        _sweep(
            {1: base, 2: [0.700, 0.701, 0.702], 4: [0.720, 0.721, 0.722]},
            {2: [0.701, 0.702, 0.703], 4: [0.740, 0.741, 0.742]},
        )
    )
    assert rising["se_trend"] == "rises" and rising["auc_half"] is False
    # ME less collapsed nowhere: the IA half fails and the conclusion says so
    flat_ia = conclusion(_sweep({1: base, 2: base}, {2: base}, se_ia=0.7, me_ia=0.6))
    assert flat_ia["ia_half"] is False and "does not reproduce" in flat_ia["lines"][-1]
    # one seed: no spread to judge a margin against
    single = conclusion(_sweep({1: [0.7], 2: [0.71]}, {2: [0.72]}))
    assert single["auc_half"] is None and "one seed" in single["lines"][1]


def test_results_page_names_the_machine_torch_and_commit(monkeypatch):
    """docs/results.md's machine line says what produced it: the CPU, its cores, torch and the
    checkout's commit (when there is one)."""
    from fastme.experiments import results

    monkeypatch.setattr(results, "_commit", lambda: "abc1234")
    line = results.describe_machine()
    assert f"{os.cpu_count()} CPUs" in line and f"torch {torch.__version__}" in line
    assert line.endswith("commit abc1234")
    monkeypatch.setattr(results, "_commit", lambda: None)
    assert "commit" not in results.describe_machine()
    monkeypatch.setattr(results, "_git", lambda *args: (_ for _ in ()).throw(OSError("no git")))
    assert results._commit() is None


def test_scale_and_analyze_cli_with_the_trainer(tmp_path):
    pytest.importorskip("fastme.train")
    out = tmp_path / "sweep"
    common = ["--synthetic-samples", "400", "--data-option", f"field_dims={FIELD_DIMS}"]
    assert (
        main(
            [
                "experiment",
                "scale",
                "--model",
                "dcnv2",
                "--scales",
                "1",
                "2",
                "--seeds",
                "0",
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--device",
                "cpu",
                "--backend",
                "reference",
                "--model-option",
                "hidden_dim=8",
                "--no-progress",
                "--seen-only",
                "--out",
                str(out),
                *common,
            ]
        )
        == 0
    )
    summary = json.loads((out / "scale.json").read_text())
    assert set(summary["se"]) == {"1", "2"} and set(summary["me"]) == {"1", "2"}
    assert 0.0 <= summary["me"]["2"]["test_auc_mean"] <= 1.0
    run = out / "runs" / "dcnv2-mex2-seed0"
    assert (run / "best.pt").is_file()
    # analyze the ME run's checkpoint, on the rows its training split saw: the sweep recorded
    # its data (spec and options), so no --data is needed
    assert main(["analyze", str(run), "--seen-only"]) == 0
    report = json.loads((run / "analysis" / "analysis.json").read_text())
    assert report["num_sets"] == 2 and report["seen_only"]
    train_rows = _tiny_data().split(0)[0].x
    assert report["rows_analysed"] == [len(np.unique(train_rows[:, i])) for i in range(4)]
    assert len(report["sub_embedding"]["per_set"]) == 2
    assert main(["analyze", str(tmp_path / "missing")]) == 2


# -- fastme analyze on a trained run, as a user runs it ------------------------------------------
# fields of 30 to 240 rows, all kept: wide enough that random tables of their shapes spread little
ANALYZE_DIMS = [30, 60, 120, 240]
ANALYZE_DATA = [
    "--data",
    "synthetic",
    "--synthetic-samples",
    "1000",
    "--data-option",
    f"field_dims={ANALYZE_DIMS}",
    "--data-option",
    "min_count=0",
]


def _train_run(out, mode, scale):
    assert (
        main(
            [
                "train",
                "--model",
                "dcnv2",
                "--mode",
                mode,
                "--scale",
                str(scale),
                *ANALYZE_DATA,
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--device",
                "cpu",
                "--backend",
                "reference",
                "--model-option",
                "hidden_dim=8",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A barely trained ME x2 and SE x1 run (7 optimiser steps: still random, as a short run is)."""
    pytest.importorskip("fastme.train")
    root = tmp_path_factory.mktemp("runs")
    return {"me": _train_run(root / "me", "me", 2), "se": _train_run(root / "se", "se", 1)}


def test_analyze_says_what_the_numbers_mean(trained_runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["analyze", str(trained_runs["me"]), "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "analysis.json").read_text())
    ratio = report["field_ia_over_random"]
    worst = int(np.argmin(ratio))
    # IA relative to random, per field: mean, min with the field's name
    assert f"mean {np.mean(ratio):.3f}, min {ratio[worst]:.3f} (f{worst})" in text
    assert report["mean_field_ia_over_random"] == pytest.approx(np.mean(ratio))
    # diversity against its random baseline, and where the SE-split baseline comes from
    d = report["diversity"]
    assert (
        f"{d['mean']:.3f}; random N(0,1) tables split the same way: {d['random_mean']:.3f}" in text
    )
    assert "SE-split baseline: analyse an SE x2 checkpoint" in text
    # seven optimiser steps leave the embeddings where they started: said in words
    assert report["verdict"]["kind"] == "random"
    band = report["verdict"]["ia_band"]
    assert (
        f"verdict: indistinguishable from random: mean IA / random {np.mean(ratio):.2f} "
        f"(random tables: 1 ± {band:.2f})" in text
    )
    assert "3 standard deviations of random draws of these shapes, at least 5%" in text
    assert "barely left their random initialisation" in text


def test_analyze_verdicts_on_learned_and_collapsed_tables(tmp_path):
    torch.manual_seed(0)
    model = build("dcnv2", [40, 50, 60], 2, True, backend="reference", hidden_dim=8)
    names = ["a", "b", "c"]
    assert analyze_model(model, tmp_path / "init", names)["verdict"]["kind"] == "random"
    with torch.no_grad():
        tables = model.embedding_tables()
        # field b collapsed onto one direction; a and c keep every direction but weight them
        # unevenly (IA below random, not collapsed)
        tables[1].copy_(torch.randn(2, 50, 1) * torch.randn(1, 1, 10))
        for i in (0, 2):
            tables[i].mul_(torch.linspace(1.0, 3.0, 10))
    result = analyze_model(model, tmp_path / "collapsed", names)
    v = result["verdict"]
    assert v["kind"] == "collapsed" and v["collapsed_fields"] == ["b"]
    assert "1 of 3 fields collapsed (IA below 0.5 x random): b 0." in v["text"]
    lines = "\n".join(summary_lines(result))
    assert "verdict: 1 of 3 fields collapsed" in lines and "min " in lines and "(b)" in lines
    with torch.no_grad():
        tables[1].copy_(torch.randn(2, 50, 10) * torch.linspace(1.0, 3.0, 10))
    assert analyze_model(model, tmp_path / "learned", names)["verdict"]["kind"] == "learned"


def test_analyze_se_base_model_says_why_there_is_no_diversity(trained_runs, tmp_path, capsys):
    capsys.readouterr()
    assert main(["analyze", str(trained_runs["se"]), "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert (
        "diversity: not measured: an SE model of width K = 10 has a single embedding set" in text
        and "--split M" in text
    )
    assert not (tmp_path / "diversity.png").exists()
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["diversity"] is None and "single embedding set" in report["diversity_note"]
    # --split 2 compares the two halves of the embedding instead
    assert main(["analyze", str(trained_runs["se"]), "--out", str(tmp_path), "--split", "2"]) == 0
    assert "diversity between 2 chunks of 5 columns" in capsys.readouterr().out
    assert _is_png(tmp_path / "diversity.png")


def test_sub_embedding_plot_names_fields_and_starts_at_zero(trained_runs, tmp_path, monkeypatch):
    from fastme.analysis import plots

    axes = {}
    finish = plots._finish

    def keep_axes(fig, path, data):
        axes[Path(path).name] = [
            (
                ax.get_ylim(),
                [t.get_text() for t in ax.get_xticklabels()],
                [ln.get_label() for ln in ax.get_lines()],
            )
            for ax in fig.axes
        ]
        return finish(fig, path, data)

    monkeypatch.setattr(plots, "_finish", keep_axes)
    assert main(["analyze", str(trained_runs["me"]), "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "sub_embedding_ia.json").read_text())
    by_ia = [f"f{i}" for i in saved["sorted_field_order"]]
    heatmap, by_target, by_source = axes["sub_embedding_ia"][:3]
    assert heatmap[1] == by_target[1] == by_source[1] == by_ia  # names, not sorted indices
    for ylim, _, labels in (by_target, by_source):
        assert ylim[0] == 0  # not zoomed onto the noise
        assert "untrained model (random table and cross weights)" in labels
    # the baseline is what an untrained model shows: this barely trained one sits on it
    assert len(saved["random_ia"]) == len(ANALYZE_DIMS)
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["sub_embedding"]["mean_over_random"] == pytest.approx(1.0, abs=0.05)


def test_analyze_seen_only_reopens_the_recorded_data(trained_runs, tmp_path, capsys):
    from fastme.data import make_synthetic

    assert main(["analyze", str(trained_runs["me"]), "--seen-only", "--out", str(tmp_path)]) == 0
    assert (
        "rows: those seen in synthetic (recorded in the checkpoint), training split"
        in capsys.readouterr().out
    )
    train_rows = make_synthetic(1000, field_dims=ANALYZE_DIMS, min_count=0).split(0)[0].x
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["rows_analysed"] == [len(np.unique(train_rows[:, i])) for i in range(4)]
    # --data overrides it, and must be the data the model was trained on
    assert (
        main(
            [
                "analyze",
                str(trained_runs["me"]),
                "--seen-only",
                "--out",
                str(tmp_path),
                *ANALYZE_DATA,
            ]
        )
        == 0
    )
    other = [*ANALYZE_DATA, "--data-option", "seed=1"]
    assert (
        main(["analyze", str(trained_runs["me"]), "--seen-only", "--out", str(tmp_path), *other])
        == 2
    )
    assert "is not the data" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["text", "pickle", "empty"])
def test_analyze_a_file_that_is_no_checkpoint(tmp_path, capsys, content):
    import pickle
    import warnings

    bad = tmp_path / "model.pt"
    if content == "pickle":  # torch refuses it with advice to load it unsafely, and warns
        bad.write_bytes(pickle.dumps({"x": 1 + 2j}, protocol=4))
    else:
        bad.write_text("hello\n" if content == "text" else "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["analyze", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fastme analyze: error: {bad} is not a ")
    for advice in ("weights_only", "file an issue", "Please"):
        assert advice not in err
        assert not any(advice in str(w.message) for w in caught)
