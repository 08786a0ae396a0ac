"""Bring your own data: Parquet (multi-file, split by file) and npy arrays."""

import csv
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fastme.cli import main
from fastme.data import load_dataset, load_vocab
from fastme.serve.predict import predict


def parquet_day(path, rows, seed):
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            "click": pa.array(rng.integers(0, 2, rows), pa.int8()),
            "site": pa.array([None if v == 0 else f"s{v}" for v in rng.integers(0, 5, rows)]),
            "count": pa.array(rng.integers(-1, 30, rows), pa.int64()),
            "ad": pa.array(rng.integers(0, 7, rows), pa.int32()),
        }
    )
    pq.write_table(table, path, row_group_size=64)
    return table


@pytest.fixture
def days(tmp_path):
    return [parquet_day(tmp_path / f"day_{d}.parquet", 150 + 10 * d, d) for d in range(3)]


def load(spec, tmp_path, **options):
    return load_dataset(spec, cache_dir=tmp_path / "cache", progress=False, **options)


def test_parquet_columns_are_encoded_as_raw_fields(days, tmp_path):
    data = load(
        f"parquet:{tmp_path}/day_*.parquet",
        tmp_path,
        label="click",
        integer=["count"],
        batch_rows=50,
    )
    table = pa.concat_tables(days)
    assert len(data) == table.num_rows and data.field_names == ["site", "count", "ad"]
    np.testing.assert_array_equal(data.y, table.column("click").to_numpy())
    vocab = load_vocab(data)
    site = table.column("site").to_pylist()
    # kept values by decreasing count, then OOV, then missing (the empty cells)
    expected = [len(vocab[0]) + 1 if v is None else vocab[0].index(v) for v in site]
    np.testing.assert_array_equal(data.x[:, 0], expected)
    counts = table.column("count").to_pylist()
    tokens = [math.floor(math.log(v) ** 2) if v > 2 else v - 2 for v in counts]
    np.testing.assert_array_equal(data.x[:, 1], [vocab[1].index(t) for t in tokens])
    assert data.field_dims == [len(v) + 2 for v in vocab]


def test_split_by_file_holds_out_the_last_days(days, tmp_path):
    files = ",".join(str(tmp_path / f"day_{d}.parquet") for d in range(3))
    data = load(f"parquet:{files}", tmp_path, label="click", test_files=1)
    train, valid, test = data.split(seed=0)
    n0, n1, n2 = (t.num_rows for t in days)
    np.testing.assert_array_equal(test.row_numbers(), np.arange(n0 + n1, n0 + n1 + n2))
    assert len(valid) == (n0 + n1) // 9 and len(train) + len(valid) == n0 + n1
    assert not set(train.row_numbers()) & set(valid.row_numbers())
    train, valid, test = load(
        f"parquet:{files}", tmp_path, label="click", valid_files=1, test_files=1
    ).split()
    assert (len(train), len(valid), len(test)) == (n0, n1, n2)


def test_bad_parquet_input_is_named(days, tmp_path):
    with pytest.raises(ValueError, match="no column nope"):
        load(f"parquet:{tmp_path}", tmp_path, label="click", integer=["nope"])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        load(f"parquet:{tmp_path}/x_*.parquet", tmp_path)
    with pytest.raises(ValueError, match="no label column 'label'"):
        load(f"parquet:{tmp_path}", tmp_path)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read .*bad.parquet as Parquet"):
        load(f"parquet:{tmp_path}/bad.parquet", tmp_path)


def test_a_parquet_file_trains_and_predicts(days, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                f"parquet:{tmp_path}",
                "--data-option",
                "label=click",
                "--model",
                "dnn",
                "--model-option",
                "hidden_dim=8",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--out",
                str(run),
                "--cache-dir",
                str(tmp_path / "c"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    capsys.readouterr()
    new = tmp_path / "new"
    new.mkdir()
    parquet_day(new / "day_9.parquet", 40, seed=9)
    summary = predict(run, f"parquet:{new}", tmp_path / "preds.csv")
    with open(tmp_path / "preds.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["row", "probability"] and len(rows) == 41
    assert summary.auc is not None and 0.0 <= summary.auc <= 1.0


def test_npy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, [3, 5, 8], (100, 3))
    np.save(tmp_path / "x.npy", x)  # int64: converted into a cache
    np.save(tmp_path / "y.npy", rng.integers(0, 2, 100))
    data = load(f"npy:{tmp_path}", tmp_path)
    assert data.field_dims == (x.max(0) + 1).tolist() and data.x.dtype == np.int32
    np.testing.assert_array_equal(data.x, x)
    (tmp_path / "meta.json").write_text('{"field_dims": [3, 5, 2]}')
    with pytest.raises(ValueError, match="field_dims too small"):
        load(f"npy:{tmp_path}", tmp_path / "other")


def test_raw_day_files_are_one_dataset_split_by_file(tmp_path):
    rng = np.random.default_rng(4)
    days = []
    for d in range(3):
        lines = [
            "\t".join(
                [str(int(rng.random() < 0.3))]
                + [str(v) for v in rng.integers(0, 9, 13)]
                + ["%04x" % v for v in rng.integers(0, 5, 26)]
            )
            for _ in range(60 + d)
        ]
        if d == 1:
            lines.insert(5, "1\t2")  # malformed: costs only itself
        (tmp_path / f"day_{d}").write_text("\n".join(lines) + "\n")
        days.append(lines)
    with pytest.warns(RuntimeWarning, match="skipped 1 malformed"):
        data = load(f"criteo:{tmp_path}/day_*", tmp_path, min_count=2, test_files=1)
    assert len(data) == 60 + 61 + 62 and data.info["malformed"]["column_count"] == 1
    train, valid, test = data.split()
    np.testing.assert_array_equal(test.row_numbers(), np.arange(121, 183))
    # the same encoding as one raw file holding the same rows
    (tmp_path / "all.txt").write_text("".join("\n".join(d) + "\n" for d in days))
    with pytest.warns(RuntimeWarning):
        one = load(f"criteo:{tmp_path / 'all.txt'}", tmp_path, min_count=2)
    np.testing.assert_array_equal(data.x, one.x)
    np.testing.assert_array_equal(data.y, one.y)


# ---- the cache of every source: keyed by content, locked, validated ---------------------------


def plain_parquet(path, sites):
    """A Parquet file whose size depends only on the number and length of the values."""
    table = pa.table(
        {"label": pa.array([i % 2 for i in range(len(sites))], pa.int8()), "site": pa.array(sites)}
    )
    pq.write_table(table, path, compression="none", use_dictionary=False, write_statistics=False)


def test_an_edit_keeping_size_and_mtime_is_not_served_from_the_old_parquet_cache(tmp_path):
    import os

    path = tmp_path / "day.parquet"
    plain_parquet(path, [f"a{i % 3}" for i in range(50)])
    first = load(f"parquet:{path}", tmp_path)
    stat = path.stat()
    plain_parquet(path, [f"b{i % 3}" for i in range(50)])  # the same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p / rsync -t do
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = load(f"parquet:{path}", tmp_path)
    assert load_vocab(first)[0] == ["a0", "a1", "a2"]
    assert load_vocab(second)[0] == ["b0", "b1", "b2"]
    os.utime(path)  # touching the file keeps its cache
    assert load(f"parquet:{path}", tmp_path).info["cache_dir"] == second.info["cache_dir"]


def test_a_truncated_parquet_cache_is_refused_naming_it(days, tmp_path):
    from pathlib import Path

    data = load(f"parquet:{tmp_path}", tmp_path, label="click")
    x = Path(data.info["cache_dir"]) / "x.npy"
    x.write_bytes(x.read_bytes()[:-100])
    with pytest.raises(ValueError, match="x.npy is missing, truncated") as error:
        load(f"parquet:{tmp_path}", tmp_path, label="click")
    assert str(x) in str(error.value) and "delete the directory" in str(error.value)


@pytest.mark.parametrize("name", ["x.npy", "y.npy"])
def test_a_truncated_npy_input_is_refused_naming_it(name, tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.integers(0, 5, (100, 3)).astype(np.int32))
    np.save(tmp_path / "y.npy", rng.integers(0, 2, 100).astype(np.float32))
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated") as error:
        load(f"npy:{tmp_path}", tmp_path)
    assert str(tmp_path / name) in str(error.value)


def test_an_npy_input_edited_in_place_is_converted_again(tmp_path):
    import os

    x = np.arange(30).reshape(10, 3) % 4  # int64: converted into a cache
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    first = load(f"npy:{tmp_path}", tmp_path)
    stat = (tmp_path / "x.npy").stat()
    np.save(tmp_path / "x.npy", 3 - x)
    os.utime(tmp_path / "x.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load(f"npy:{tmp_path}", tmp_path)
    np.testing.assert_array_equal(first.x, x)
    np.testing.assert_array_equal(second.x, 3 - x)


# ---- csv:PATH: a delimited file of one's own ----------------------------------------------


def own_csv(path, rows, seed, columns=("site", "clicked", "count", "note", "ad"), sep=","):
    """A CSV of one's own (string cells, the count an integer) and the same rows as a table."""
    rng = np.random.default_rng(seed)
    table = {
        "site": [None if v == 0 else f"s{v}" for v in rng.integers(0, 5, rows)],
        "clicked": rng.integers(0, 2, rows).tolist(),
        "count": rng.integers(-1, 30, rows).tolist(),
        "note": [f"n{v}" for v in rng.integers(0, 100, rows)],
        "ad": [f"a{v}" for v in rng.integers(0, 7, rows)],
    }
    lines = [sep.join(columns)] + [
        sep.join("" if table[c][i] is None else str(table[c][i]) for c in columns)
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return pa.table(table)


def test_a_csv_file_is_encoded_as_its_parquet_twin(tmp_path):
    table = own_csv(tmp_path / "mine.csv", 300, seed=5)
    pq.write_table(table, tmp_path / "mine.parquet")
    options = {"label": "clicked", "fields": ["site", "count", "ad"], "integer": ["count"]}
    twin = load(f"parquet:{tmp_path / 'mine.parquet'}", tmp_path, **options)
    # fields and integer as --data-option gives them: comma-separated strings
    data = load(
        f"csv:{tmp_path / 'mine.csv'}",
        tmp_path,
        label="clicked",
        fields="site,count,ad",
        integer="count",
    )
    assert data.field_names == ["site", "count", "ad"] and data.info["dataset"] == "csv"
    np.testing.assert_array_equal(data.x, twin.x)
    np.testing.assert_array_equal(data.y, twin.y)
    assert load_vocab(data) == load_vocab(twin)
    # default: every column but the label is a categorical field
    assert load(f"csv:{tmp_path / 'mine.csv'}", tmp_path, label="clicked").field_names == [
        "site",
        "count",
        "note",
        "ad",
    ]
    # a bad label, a non-integer count and a short line cost only their rows
    with open(tmp_path / "mine.csv", "a") as f:
        f.write("s1,7,3,n1,a1\ns1,1,x3,n1,a1\ns1,1\n")
    with pytest.warns(RuntimeWarning, match="skipped 3 malformed rows"):
        messy = load(f"csv:{tmp_path / 'mine.csv'}", tmp_path, **options)
    assert (
        messy.info["malformed"]["bad_label"],
        messy.info["malformed"]["bad_integer"],
        messy.info["malformed"]["column_count"],
    ) == (1, 1, 1)
    np.testing.assert_array_equal(messy.x, twin.x)


def test_a_csv_file_trains_and_predicts_with_the_training_vocabulary(tmp_path, capsys):
    from fastme.train import load_trained
    from fastme.serve.predict import sigmoid

    own_csv(tmp_path / "train.csv", 300, seed=6, sep="\t")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                f"csv:{tmp_path / 'train.csv'}",
                "--data-option",
                "label=clicked",
                "--data-option",
                "delimiter=tab",
                "--data-option",
                "fields=site,count,ad",
                "--data-option",
                "integer=count",
                "--model",
                "dnn",
                "--model-option",
                "hidden_dim=8",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--out",
                str(run),
                "--cache-dir",
                str(tmp_path / "c"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    capsys.readouterr()
    data = load_dataset(
        f"csv:{tmp_path / 'train.csv'}",
        cache_dir=tmp_path / "c",
        label="clicked",
        delimiter="tab",
        fields="site,count,ad",
        integer="count",
    )  # the training cache, reused
    model, _ = load_trained(run)
    with torch.no_grad():
        expected = sigmoid(model(torch.from_numpy(np.asarray(data.x, np.int64))).double().numpy())
    # the training file itself, and the same rows without the label, columns reordered
    summary = predict(run, f"csv:{tmp_path / 'train.csv'}", tmp_path / "a.csv")
    own_csv(tmp_path / "new.csv", 300, seed=6, columns=("ad", "note", "count", "site"), sep="\t")
    assert (
        main(
            [
                "predict",
                str(run),
                "--data",
                f"csv:{tmp_path / 'new.csv'}",
                "--out",
                str(tmp_path / "b.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    for name in ("a.csv", "b.csv"):
        with open(tmp_path / name, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["row", "probability"] and [r[0] for r in rows[1:]] == [
            str(i) for i in range(300)
        ]
        np.testing.assert_allclose([float(r[1]) for r in rows[1:]], expected, rtol=1e-5)
    assert summary.auc is not None and summary.scored == 300
    # a file without one of the training fields is refused, naming the column and the file
    own_csv(tmp_path / "short.csv", 5, seed=6, columns=("ad", "site"), sep="\t")
    assert main(["predict", str(run), "--data", f"csv:{tmp_path / 'short.csv'}"]) == 2
    err = capsys.readouterr().err
    assert "no column 'count' in" in err and "short.csv" in err and len(err.splitlines()) == 1


def test_bad_csv_options_name_the_column_and_the_file(tmp_path, capsys):
    path = tmp_path / "mine.csv"
    own_csv(path, 20, seed=7)
    cases = [
        ({}, r"the label column 'label' is not in .*mine.csv \(columns: site, clicked"),
        ({"label": "clicked", "fields": "site,nope"}, r"no column 'nope' in .*mine.csv"),
        ({"label": "clicked", "integer": "ad2"}, r"no column 'ad2' in .*mine.csv"),
        (
            {"label": "clicked", "fields": "site", "integer": "count"},
            r"integer column\(s\) 'count' of .*mine.csv are not among the fields",
        ),
        (
            {"label": "clicked", "fields": "clicked,site"},
            "label column 'clicked' of .*mine.csv cannot be a field",
        ),
        ({"label": "clicked", "delimiter": ";;"}, "delimiter must be one character"),
        ({"label": "clicked", "columns": "a"}, "unknown option.*columns"),
    ]
    for options, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            load(f"csv:{path}", tmp_path, **options)
    own_csv(tmp_path / "tabs.csv", 5, seed=7, sep="\t")
    with pytest.raises(ValueError, match="is it tab-separated"):
        load(f"csv:{tmp_path / 'tabs.csv'}", tmp_path, label="clicked")
    (tmp_path / "twice.csv").write_text("a,clicked,a\nx,1,y\n")
    with pytest.raises(ValueError, match="twice.csv: the header names the column.* a twice"):
        load(f"csv:{tmp_path / 'twice.csv'}", tmp_path, label="clicked")
    (tmp_path / "quoted.csv").write_text('"a","clicked"\n"x","1"\n')
    with pytest.raises(ValueError, match="quoted.csv: the header line holds"):
        load(f"csv:{tmp_path / 'quoted.csv'}", tmp_path, label="clicked")
    (tmp_path / "other.csv").write_text("site,clicked,count\ns1,1,3\n")
    with pytest.raises(ValueError, match="other.csv has the columns .* every file needs the"):
        load(f"csv:{path},{tmp_path / 'other.csv'}", tmp_path, label="clicked")
    assert (
        main(["train", "--data", f"csv:{path}", "--data-option", "label=click", "--no-progress"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("fastme train: error: the label column 'click' is not in")
    assert "mine.csv" in err and len(err.splitlines()) == 1
