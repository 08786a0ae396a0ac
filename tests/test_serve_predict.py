"""fastme predict: one probability per input row, in input order, encoded as in training."""

import csv
import warnings

import numpy as np
import pytest
import torch

from fastme.cli import main
from fastme.data import load_dataset, load_vocab
from fastme.data.formats.avazu import AVAZU_COLUMNS
from fastme.data.formats.criteo import CRITEO_CAT, CRITEO_INT
from fastme.models import build
from fastme.serve.predict import predict, sigmoid
from fastme.train import TrainConfig, train
from fastme.train.metrics import roc_auc


def random_criteo_rows(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ints = [str(v) if rng.random() > 0.2 else "" for v in rng.integers(-1, 60, 13)]
        cats = ["%06x" % v if rng.random() > 0.1 else "" for v in rng.integers(0, 6, 26)]
        rows.append([str(int(rng.random() < 0.4))] + ints + cats)
    return rows


def trained_run(tmp_path, kind, text):
    """Train a tiny model for one epoch on ``text`` (a raw file); returns (run dir, data)."""
    raw = tmp_path / f"train.{kind}"
    raw.write_text(text)
    data = load_dataset(f"{kind}:{raw}", cache_dir=tmp_path / "cache", min_count=2, progress=False)
    torch.manual_seed(0)
    model = build("dnn", data.field_dims, 2, multi=True, hidden_dim=8)
    train(
        model,
        data,
        TrainConfig(
            epochs=1, batch_size=64, progress=False, verbose=False, out_dir=str(tmp_path / "run")
        ),
    )
    return tmp_path / "run", data


def eager_probabilities(run, x):
    from fastme.train import load_trained

    model, _ = load_trained(run)
    with torch.no_grad():
        return sigmoid(model(torch.from_numpy(np.asarray(x, np.int64))).double().numpy())


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def criteo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("criteo")
    rows = random_criteo_rows(300, seed=1)
    run, data = trained_run(tmp, "criteo", "".join("\t".join(r) + "\n" for r in rows))
    return tmp, rows, run, data


def test_unlabeled_criteo_test_file_gets_the_training_encoding(criteo_run):
    tmp, rows, run, data = criteo_run
    test = tmp / "test.txt"
    test.write_text("".join("\t".join(r[1:]) + "\n" for r in rows))  # 39 columns, no label
    summary = predict(run, f"criteo:{test}", tmp / "preds.csv")
    header, out = read_csv(tmp / "preds.csv")
    assert header == ["row", "probability"]
    assert [int(r[0]) for r in out] == list(range(len(rows)))
    assert (summary.rows, summary.scored, summary.auc) == (len(rows), len(rows), None)
    # the cache holds the same rows in the same order: the same indices, the same probabilities
    expected = eager_probabilities(run, data.x)
    np.testing.assert_allclose([float(r[1]) for r in out], expected, rtol=1e-5)


def test_labeled_file_reports_auc_and_unseen_values_take_the_oov_index(criteo_run):
    tmp, rows, run, data = criteo_run
    novel = [list(r) for r in rows[:20]]
    for r in novel:
        r[14] = "ffffff"  # C1: never seen in training
    path = tmp / "labeled.txt"
    path.write_text("".join("\t".join(r) + "\n" for r in rows + novel))
    summary = predict(run, f"criteo:{path}", tmp / "labeled.csv")
    _, out = read_csv(tmp / "labeled.csv")
    probs = np.array([float(r[1]) for r in out])
    labels = np.array([float(r[0]) for r in rows + novel])
    assert summary.auc == pytest.approx(roc_auc(labels, probs), abs=1e-6)
    x = np.array(data.x[:20])
    x[:, 13] = len(load_vocab(data)[13])  # C1's OOV index
    np.testing.assert_allclose(probs[len(rows) :], eager_probabilities(run, x), rtol=1e-5)


def test_malformed_rows_keep_their_place_with_an_empty_probability(criteo_run):
    tmp, rows, run, _ = criteo_run
    good = [("\t".join(r[1:]) + "\n").encode() for r in rows[:6]]
    bad_int = list(rows[6][1:])
    bad_int[2] = "x7"
    lines = [
        good[0],
        b"1\t2\t3\n",
        good[1],
        b"\n",
        good[2],
        ("\t".join(bad_int) + "\n").encode(),
        good[3],
        b"\xff\xfe" + good[4],
        good[5],
    ]
    path = tmp / "messy.txt"
    path.write_bytes(b"".join(lines))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = predict(run, f"criteo:{path}", tmp / "messy.csv")
    _, out = read_csv(tmp / "messy.csv")
    assert [int(r[0]) for r in out] == list(range(len(lines)))
    empty = [i for i, r in enumerate(out) if r[1] == ""]
    assert empty == [1, 3, 5, 7]
    assert summary.malformed == {"column_count": 2, "encoding": 1, "bad_integer": 1}
    clean = tmp / "clean.txt"
    clean.write_bytes(b"".join(good))
    predict(run, f"criteo:{clean}", tmp / "clean.csv")
    _, reference = read_csv(tmp / "clean.csv")
    assert [r[1] for i, r in enumerate(out) if i not in empty] == [
        r[1] for i, r in enumerate(reference) if i != 4
    ]


def test_kaggle_csv_ids_and_cli(criteo_run, capsys):
    tmp, rows, run, _ = criteo_run
    path = tmp / "test.csv"
    lines = [",".join(["Id"] + CRITEO_INT + CRITEO_CAT)]
    lines += [",".join([str(60000000 + i)] + r[1:]) for i, r in enumerate(rows[:10])]
    path.write_text("\n".join(lines) + "\n")
    assert (
        main(
            [
                "predict",
                str(run),
                "--data",
                f"criteo:{path}",
                "--out",
                str(tmp / "kaggle.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "10 rows (10 scored, 0 malformed)" in capsys.readouterr().out
    header, out = read_csv(tmp / "kaggle.csv")
    assert header == ["Id", "Predicted"] and out[0][0] == "60000000" and len(out) == 10
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a byte-order mark changes nothing
    assert (
        main(
            [
                "predict",
                str(run),
                "--data",
                f"criteo:{path}",
                "--out",
                str(tmp / "bom.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_csv(tmp / "bom.csv")[1] == out
    bad = tmp / "bad.csv"
    bad.write_text("Id,foo\n1,2\n")
    assert main(["predict", str(run), "--data", f"criteo:{bad}"]) == 2
    assert "is not the Criteo competition's CSV" in capsys.readouterr().err


@pytest.fixture(scope="module")
def avazu_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("avazu")
    rng = np.random.default_rng(2)
    lines = []
    for i in range(200):
        cells = [str(10**19 + i), str(int(rng.random() < 0.3)), f"141021{i % 24:02d}"]
        cells += [f"v{v}" for v in rng.integers(0, 4, len(AVAZU_COLUMNS) - 3)]
        lines.append(",".join(cells))
    run, data = trained_run(tmp, "avazu", ",".join(AVAZU_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    return tmp, lines, run, data


def avazu_test_text(lines, header=True):
    """Avazu's test file of ``lines`` (train rows): without click, with or without the header."""
    head = [",".join(c for c in AVAZU_COLUMNS if c != "click")] if header else []
    return (
        "\n".join(head + [",".join(line.split(",")[:1] + line.split(",")[2:]) for line in lines])
        + "\n"
    )


def test_avazu_test_file_without_click(avazu_run):
    tmp_path, lines, run, data = avazu_run
    test = tmp_path / "test"
    test.write_text(avazu_test_text(lines))
    predict(run, f"avazu:{test}", tmp_path / "preds.csv")
    names, out = read_csv(tmp_path / "preds.csv")
    assert names == ["id", "click"] and [r[0] for r in out] == [ln.split(",")[0] for ln in lines]
    np.testing.assert_allclose(
        [float(r[1]) for r in out], eager_probabilities(run, data.x), rtol=1e-5
    )


def test_avazu_files_without_their_header_line(avazu_run, capsys):
    tmp, lines, run, data = avazu_run
    (tmp / "train").write_text(",".join(AVAZU_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    (tmp / "train-bare").write_text("\n".join(lines) + "\n")
    (tmp / "test").write_text(avazu_test_text(lines))
    (tmp / "test-bare").write_text(avazu_test_text(lines, header=False))
    results = {}
    for name in ("train", "train-bare", "test", "test-bare"):
        options = ["--data-option", "header=none"] if name.endswith("bare") else []
        assert (
            main(
                [
                    "predict",
                    str(run),
                    "--data",
                    f"avazu:{tmp / name}",
                    "--out",
                    str(tmp / f"{name}.csv"),
                    "--no-progress",
                ]
                + options
            )
            == 0
        )
        results[name] = read_csv(tmp / f"{name}.csv")
        assert results[name][0] == ["id", "click"] and len(results[name][1]) == len(lines)
        # the train files' labels are read, with or without the header
        assert ("AUC" in capsys.readouterr().out) == name.startswith("train")
    assert results["train-bare"] == results["train"] == results["test"] == results["test-bare"]
    np.testing.assert_allclose(
        [float(r[1]) for r in results["test-bare"][1]], eager_probabilities(run, data.x), rtol=1e-5
    )
    # without the option, a headerless file is refused with the option that reads it
    assert main(["predict", str(run), "--data", f"avazu:{tmp / 'test-bare'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastme predict: error: ") and len(err.splitlines()) == 1
    assert "test-bare" in err and "--data-option header=none" in err
    assert (
        main(
            ["predict", str(run), "--data", f"avazu:{tmp / 'test'}", "--data-option", "header=none"]
        )
        == 2
    )
    assert "has a header line" in capsys.readouterr().err
    assert (
        main(["predict", str(run), "--data", f"avazu:{tmp / 'test'}", "--data-option", "hour=raw"])
        == 2
    )
    assert "takes no option hour" in capsys.readouterr().err


def test_compressed_input_and_a_damaged_stream(criteo_run, capsys):
    import bz2
    import gzip

    tmp, rows, run, _ = criteo_run
    text = "".join("\t".join(r[1:]) + "\n" for r in rows[:30]).encode()
    (tmp / "plain.txt").write_bytes(text)
    predict(run, f"criteo:{tmp / 'plain.txt'}", tmp / "plain.csv")
    for name, data in (("t.gz", gzip.compress(text)), ("t.bz2", bz2.compress(text))):
        (tmp / name).write_bytes(data)
        predict(run, f"criteo:{tmp / name}", tmp / f"{name}.csv")
        assert read_csv(tmp / f"{name}.csv") == read_csv(tmp / "plain.csv")
    (tmp / "cut.gz").write_bytes(gzip.compress(text)[:-40])
    assert main(["predict", str(run), "--data", f"criteo:{tmp / 'cut.gz'}", "--no-progress"]) == 2
    assert "cut.gz is damaged" in capsys.readouterr().err


def test_a_failed_predict_keeps_the_old_output_and_leaves_nothing(criteo_run, capsys):
    tmp, rows, run, _ = criteo_run
    where = tmp / "failures"
    where.mkdir()
    keep = where / "keep.csv"
    keep.write_text("row,probability\n" + "".join(f"{i},0.5\n" for i in range(100)))
    before = keep.read_text()
    cut = where / "cut.gz"
    import gzip

    cut.write_bytes(gzip.compress("".join("\t".join(r[1:]) + "\n" for r in rows).encode())[:-40])
    for data in (
        f"criteo:{tmp / 'nope.txt'}",  # a missing file
        f"avazu:{tmp / 'train.criteo'}",  # the model was trained on the other dataset
        f"criteo:{cut}",
    ):  # damaged half-way through
        for out in (keep, where / "new" / "p.csv"):
            assert (
                main(["predict", str(run), "--data", data, "--out", str(out), "--no-progress"]) == 2
            )
            assert capsys.readouterr().err.startswith("fastme predict: error: ")
            assert keep.read_text() == before
            assert sorted(p.name for p in where.iterdir()) == ["cut.gz", "keep.csv"]


def test_predicts_running_at_once_into_one_file_leave_a_whole_file(criteo_run, monkeypatch):
    """One predict pauses half-way while another writes the same file from start to end; the
    file then holds the whole output of one of them (the last to finish), never a mixture."""
    import threading

    from fastme.serve.predict import Predictor

    tmp, rows, run, _ = criteo_run
    short, long = tmp / "short.txt", tmp / "long.txt"
    short.write_text("".join("\t".join(r[1:]) + "\n" for r in rows[:40]))
    long.write_text("".join("\t".join(r[1:]) + "\n" for r in rows))
    real, paused, go = Predictor.iter_raw, threading.Event(), threading.Event()

    def iter_raw(self, kind, path, **kwargs):
        for i, block in enumerate(real(self, kind, path, block_bytes=1024, **kwargs)):
            yield block
            if i == 0 and str(path) == str(short):
                paused.set()
                assert go.wait(60)

    monkeypatch.setattr(Predictor, "iter_raw", iter_raw)
    go.set()
    predict(run, f"criteo:{short}", tmp / "short.csv")  # the same blocks, not paused
    paused.clear()
    go.clear()
    out = tmp / "shared.csv"
    first = threading.Thread(target=predict, args=(run, f"criteo:{short}", out))
    first.start()
    assert paused.wait(60)
    predict(run, f"criteo:{long}", out)  # runs whole while the first one is half-way
    go.set()
    first.join()
    assert read_csv(out) == read_csv(tmp / "short.csv")
    assert not [p for p in tmp.iterdir() if ".partial" in p.name]


def test_kaggle_ids_for_the_test_txt_layout(criteo_run, capsys):
    tmp, rows, run, _ = criteo_run
    test = tmp / "kaggle_test.txt"
    test.write_text("".join("\t".join(r[1:]) + "\n" for r in rows[:25]))
    predict(run, f"criteo:{test}", tmp / "numbered.csv")
    assert (
        main(
            [
                "predict",
                str(run),
                "--data",
                f"criteo:{test}",
                "--id-start",
                "60000000",
                "--out",
                str(tmp / "ids.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert f"wrote {tmp / 'ids.csv'}" in capsys.readouterr().out
    header, out = read_csv(tmp / "ids.csv")
    assert header == ["Id", "Predicted"]
    assert [int(r[0]) for r in out] == list(range(60000000, 60000025))
    assert [r[1] for r in out] == [r[1] for r in read_csv(tmp / "numbered.csv")[1]]


def test_an_id_column_of_a_csv_and_the_combinations_that_make_no_sense(criteo_run, capsys):
    tmp, rows, run, _ = criteo_run
    csv_file = tmp / "ids_test.csv"
    lines = [",".join(["Id"] + CRITEO_INT + CRITEO_CAT)]
    lines += [",".join([str(60000000 + i)] + r[1:]) for i, r in enumerate(rows[:10])]
    csv_file.write_text("\n".join(lines) + "\n")
    predict(run, f"criteo:{csv_file}", tmp / "by_id.csv", id_column="C26")
    header, out = read_csv(tmp / "by_id.csv")
    assert header == ["C26", "Predicted"] and [r[0] for r in out] == [r[-1] for r in rows[:10]]
    predict(run, f"criteo:{csv_file}", tmp / "by_Id.csv")
    assert [r[1] for r in out] == [r[1] for r in read_csv(tmp / "by_Id.csv")[1]]
    test = tmp / "kaggle_test.txt"
    test.write_text("".join("\t".join(r[1:]) + "\n" for r in rows[:5]))
    keep = tmp / "untouched.csv"
    keep.write_text("old\n")
    cases = [
        (f"criteo:{test}", ["--id-column", "Id"], "--id-column: "),
        (f"criteo:{csv_file}", ["--id-column", "Nope"], "--id-column: "),
        (f"criteo:{csv_file}", ["--id-start", "1"], "--id-start: "),
        (f"criteo:{test}", ["--id-start", "1", "--id-column", "Id"], "--id-start and --id-column"),
        (f"criteo:{test}", ["--id-start", "-1"], "--id-start must be"),
        ("synthetic", ["--id-column", "Id"], "--id-column: "),
    ]
    for data, options, message in cases:
        assert (
            main(
                ["predict", str(run), "--data", data, *options, "--out", str(keep), "--no-progress"]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert err.startswith(f"fastme predict: error: {message}") and err.count("\n") == 1
        assert keep.read_text() == "old\n"


def test_parquet_ids_from_a_column_or_a_start(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    n = 400
    table = pa.table(
        {
            "label": rng.integers(0, 2, n),
            "a": rng.integers(0, 5, n).astype(str),
            "b": rng.integers(0, 7, n).astype(str),
            "key": [f"k{i}" for i in range(n)],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    data = load_dataset(
        f"parquet:{tmp_path / 't.parquet'}",
        cache_dir=tmp_path / "cache",
        fields=["a", "b"],
        progress=False,
    )
    model = build("dnn", data.field_dims, 1, hidden_dim=4)
    train(
        model,
        data,
        TrainConfig(
            epochs=1, batch_size=64, progress=False, verbose=False, out_dir=str(tmp_path / "run")
        ),
    )
    spec = f"parquet:{tmp_path / 't.parquet'}"
    predict(tmp_path / "run", spec, tmp_path / "rows.csv")
    predict(tmp_path / "run", spec, tmp_path / "keys.csv", id_column="key")
    predict(tmp_path / "run", spec, tmp_path / "from.csv", id_start=1000)
    rows, keys, start = (read_csv(tmp_path / f) for f in ("rows.csv", "keys.csv", "from.csv"))
    assert (rows[0], keys[0], start[0]) == (
        ["row", "probability"],
        ["key", "probability"],
        ["id", "probability"],
    )
    assert [r[0] for r in keys[1]] == [f"k{i}" for i in range(n)]
    assert [int(r[0]) for r in start[1]] == list(range(1000, 1000 + n))
    assert [r[1] for r in rows[1]] == [r[1] for r in keys[1]] == [r[1] for r in start[1]]
    with pytest.raises(ValueError, match="--id-column: .* has no column 'nope'"):
        predict(tmp_path / "run", spec, tmp_path / "keys.csv", id_column="nope")
