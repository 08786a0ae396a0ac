"""Raw Criteo / Avazu preprocessing: parsing, malformed rows, thresholds, index layout, cache."""

import math
import warnings

import numpy as np
import pytest

from fastme.data import load_dataset, load_vocab, preprocess
from fastme.data import sources as raw_module
from fastme.data.formats.avazu import AVAZU_COLUMNS
from fastme.data.text import criteo_integer_tokens


def criteo_line(label, ints, cats):
    assert len(ints) == 13 and len(cats) == 26
    return "\t".join([str(label)] + [str(v) for v in ints] + list(cats)) + "\n"


def write(path, text):
    path.write_text(text)
    return path


def load(spec, tmp_path, **options):
    options.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # malformed-row summaries
        return load_dataset(spec, cache_dir=tmp_path / "cache", **options)


# ---- Criteo -------------------------------------------------------------------------------------


def test_criteo_integer_transform_matches_the_winners_formula():
    import pyarrow as pa

    values = [-3, -2, -1, 0, 1, 2, 3, 4, 7, 8, 20, 21, 100, 1000, 400098, 2**31 - 1]
    got = criteo_integer_tokens(pa.array([str(v) for v in values] + [""])).to_pylist()
    expected = [math.floor(math.log(v) ** 2) if v > 2 else v - 2 for v in values] + [None]
    assert got == expected
    # v <= 2 and v > 2 never collide: the log branch starts at floor(ln(3)^2) = 1.
    assert got[values.index(3)] == 1 and got[values.index(2)] == 0


@pytest.fixture
def criteo_file(tmp_path):
    cats = ["%08x" % i for i in range(26)]
    lines = []
    # I1 column: 5 (x3 rows) -> floor(ln5^2) = 2; 1 (x2) -> -1; empty (x1); 100 -> 21 (x1)
    for i1, label in [(5, 1), (5, 0), (5, 0), (1, 1), (1, 0), ("", 0), (100, 1)]:
        row_cats = list(cats)
        row_cats[0] = "aaaaaaaa" if label else ""  # C1: a value or empty
        lines.append(criteo_line(label, [i1] + [2] * 12, row_cats))
    lines.append("1\t2\t3\n")  # too few columns
    lines.append(criteo_line(0, ["x1"] + [2] * 12, cats))  # non-integer I1
    lines.append(criteo_line(7, [2] * 13, cats))  # label not 0/1
    lines.append(criteo_line(0, [2] * 13, cats).rstrip("\n") + "\textra\n")  # too many columns
    return write(tmp_path / "train.txt", "".join(lines))


def test_criteo_parsing_indices_and_malformed_rows(criteo_file, tmp_path):
    with pytest.warns(RuntimeWarning, match="skipped 4 malformed rows"):
        data = load_dataset(
            f"criteo:{criteo_file}", cache_dir=tmp_path / "c", min_count=1, progress=False
        )
    assert len(data) == 7
    assert data.field_names[:2] == ["I1", "I2"] and data.field_names[13] == "C1"
    np.testing.assert_array_equal(data.y, [1, 0, 0, 1, 0, 0, 1])
    vocab = load_vocab(data)
    # I1 tokens by decreasing count (ties by value): 2 (x3), -1 (x2), 21 (x1); then OOV, missing
    assert vocab[0] == [2, -1, 21]
    assert data.field_dims[0] == 3 + 2
    np.testing.assert_array_equal(data.x[:, 0], [0, 0, 0, 1, 1, 4, 2])
    # C1: "aaaaaaaa" in 3 rows, empty (missing index) in the other 4
    assert vocab[13] == ["aaaaaaaa"]
    np.testing.assert_array_equal(data.x[:, 13], [0, 2, 2, 0, 2, 2, 0])
    bad = data.info["malformed"]
    assert (bad["column_count"], bad["bad_integer"], bad["bad_label"]) == (2, 1, 1)
    assert data.x.dtype == np.int32 and data.y.dtype == np.float32
    data.check_indices()


def test_rare_values_share_the_oov_index(criteo_file, tmp_path):
    data = load(f"criteo:{criteo_file}", tmp_path, min_count=3)
    # only I1 token 2 (count 3) survives; -1 (count 2) and 21 (count 1) become OOV = 1
    assert load_vocab(data)[0] == [2]
    np.testing.assert_array_equal(data.x[:, 0], [0, 0, 0, 1, 1, 2, 1])
    # a missing value keeps its own index even though it is rare
    assert data.field_dims[0] == 3
    info = data.info["fields"][0]
    assert (info["kept"], info["rare_rows"], info["missing_rows"]) == (1, 3, 1)


def test_threshold_is_inclusive(tmp_path):
    cats = ["c"] * 26
    lines = [criteo_line(i % 2, [10] * 13, cats) for i in range(10)]
    lines += [criteo_line(1, [1000] * 13, cats) for _ in range(9)]
    path = write(tmp_path / "t.txt", "".join(lines))
    data = load(f"criteo:{path}", tmp_path)  # default min_count 10: count 10 kept, 9 not
    assert load_vocab(data)[0] == [math.floor(math.log(10) ** 2)]
    assert (data.x[10:, 0] == 1).all()


def test_criteo_real_sample_by_hand(tmp_path):
    """The first line of a real Kaggle sample, mapped by hand."""
    sample = "/work/shared/data/criteo_sample.txt"
    import os

    if not os.path.exists(sample):
        pytest.skip("the real sample is not available here")
    first = open(sample).readline().rstrip("\n").split("\t")
    data = load(f"criteo:{sample}", tmp_path, min_count=1)
    vocab = load_vocab(data)
    assert len(data) == 100 and data.num_fields == 39
    for i in range(13):
        cell = first[1 + i]
        idx = int(data.x[0, i])
        if cell == "":
            assert idx == data.field_dims[i] - 1
        else:
            v = int(cell)
            assert vocab[i][idx] == (math.floor(math.log(v) ** 2) if v > 2 else v - 2)
    for i in range(26):
        cell, idx = first[14 + i], int(data.x[0, 13 + i])
        assert (idx == data.field_dims[13 + i] - 1) if cell == "" else vocab[13 + i][idx] == cell


# ---- Avazu --------------------------------------------------------------------------------------


def avazu_line(row_id, click, hour, c1="1005", site="1fbe01fe", **overrides):
    values = {name: f"{name}_v" for name in AVAZU_COLUMNS}
    values.update(id=str(row_id), click=str(click), hour=hour, C1=c1, site_id=site, **overrides)
    return ",".join(values[name] for name in AVAZU_COLUMNS) + "\n"


@pytest.fixture
def avazu_file(tmp_path):
    lines = [
        ",".join(AVAZU_COLUMNS) + "\n",
        avazu_line(10000169349117863715, 0, "14102100"),  # Tue 2014-10-21 00h
        avazu_line(1, 1, "14102100"),
        avazu_line(2, 0, "14102513", c1="1002"),  # Sat 2014-10-25 13h
        avazu_line(3, 1, "14102623", site=""),  # Sun 23h, site_id empty -> missing
        avazu_line(4, 0, "14102100").replace(",", ",,", 1),  # 25 columns
        avazu_line(5, 0, "14103299"),  # no such date/hour
        avazu_line(6, 2, "14102100"),
    ]  # label 2
    return write(tmp_path / "train.csv", "".join(lines))


def test_avazu_hour_split_and_malformed_rows(avazu_file, tmp_path):
    with pytest.warns(RuntimeWarning, match="skipped 3 malformed rows"):
        data = load_dataset(
            f"avazu:{avazu_file}", cache_dir=tmp_path / "c", min_count=1, progress=False
        )
    assert data.field_names[:3] == ["hour_of_day", "weekday", "C1"]
    assert "id" not in data.field_names and data.num_fields == 23
    assert len(data) == 4
    np.testing.assert_array_equal(data.y, [0, 1, 0, 1])
    vocab = load_vocab(data)
    hours = [vocab[0][i] for i in data.x[:, 0]]
    weekdays = [vocab[1][i] for i in data.x[:, 1]]
    assert hours == [0, 0, 13, 23]
    assert weekdays == [1, 1, 5, 6]  # Monday = 0
    site = data.field_names.index("site_id")
    assert data.x[3, site] == data.field_dims[site] - 1  # missing
    bad = data.info["malformed"]
    assert (bad["column_count"], bad["bad_hour"], bad["bad_label"]) == (1, 1, 1)


def test_avazu_raw_hour_and_default_threshold(avazu_file, tmp_path):
    data = load(f"avazu:{avazu_file}", tmp_path, hour="raw")
    assert data.field_names[0] == "hour" and data.num_fields == 22
    # the raw hour is not validated, so the impossible date is a row like any other
    assert len(data) == 5
    # default min_count 2: "14102100" (2 valid rows) kept, the others are OOV
    assert load_vocab(data)[0] == ["14102100"]
    np.testing.assert_array_equal(data.x[:, 0], [0, 0, 1, 1, 1])


def test_avazu_wrong_header_is_a_clear_error(tmp_path):
    path = write(tmp_path / "test.csv", "id,hour,C1\n1,14102100,1005\n")
    with pytest.raises(ValueError, match="does not look like the Avazu train file"):
        load(f"avazu:{path}", tmp_path)


def test_a_headerless_avazu_file_gives_its_headed_twins_cache(avazu_file, tmp_path):
    text = avazu_file.read_text()
    bare = write(tmp_path / "bare.csv", text.split("\n", 1)[1])
    headed = load(f"avazu:{avazu_file}", tmp_path / "a", min_count=1)
    headerless = load(f"avazu:{bare}", tmp_path / "b", min_count=1, header="none")
    np.testing.assert_array_equal(headed.x, headerless.x)
    np.testing.assert_array_equal(headed.y, headerless.y)
    assert load_vocab(headed) == load_vocab(headerless)
    assert headed.info["malformed"] == headerless.info["malformed"]
    assert headed.info["options"] == headerless.info["options"]  # header changes no index
    # several headerless files are one dataset too, read with the same option
    half = text.split("\n")
    parts = [
        write(tmp_path / "p1", "\n".join(half[1:4]) + "\n"),
        write(tmp_path / "p2", "\n".join(half[4:])),
    ]
    several = load(f"avazu:{parts[0]},{parts[1]}", tmp_path / "c", min_count=1, header="none")
    np.testing.assert_array_equal(headed.x, several.x)


def test_a_headerless_avazu_file_without_the_option_is_refused_naming_it(avazu_file, tmp_path):
    lines = avazu_file.read_text().split("\n", 1)
    bare = write(tmp_path / "bare.csv", lines[1])
    with pytest.raises(
        ValueError,
        match=r"bare.csv does not look like the Avazu train file: "
        r".*looks like a row.*header=none",
    ):
        load(f"avazu:{bare}", tmp_path)
    with pytest.raises(ValueError, match=r"train.csv has a header line.*leave out"):
        load(f"avazu:{avazu_file}", tmp_path, header="none")
    test_file = write(
        tmp_path / "test",
        "\n".join(
            ",".join(c for i, c in enumerate(line.split(",")) if i != 1)
            for line in lines[1].split("\n")[:2]
        )
        + "\n",
    )
    with pytest.raises(ValueError, match="test is Avazu's test file .*no labels to train on"):
        load(f"avazu:{test_file}", tmp_path, header="none")
    with pytest.raises(ValueError, match="header must be 'none'"):
        load(f"avazu:{bare}", tmp_path, header="no")


# ---- errors and the cache -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["criteo", "avazu"])
def test_missing_and_empty_files(kind, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load(f"{kind}:{tmp_path / 'nope.txt'}", tmp_path)
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="empty"):
        load(f"{kind}:{empty}", tmp_path)


def test_header_only_and_all_malformed_files(tmp_path):
    header = write(tmp_path / "h.csv", ",".join(AVAZU_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="no valid avazu rows"):
        load(f"avazu:{header}", tmp_path)
    garbage = write(tmp_path / "g.txt", "a\tb\n1\t2\t3\n")
    with pytest.raises(ValueError, match="no valid criteo rows"):
        load(f"criteo:{garbage}", tmp_path)


def test_bad_specs_and_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("movielens:x")
    with pytest.raises(ValueError, match="criteo:PATH"):
        load_dataset("criteo:")
    with pytest.raises(TypeError, match="hour"):
        load_dataset("criteo:x", hour="raw")
    with pytest.raises(ValueError, match="min_count"):
        preprocess("criteo", tmp_path / "x", min_count=0)


def test_cache_is_built_once_and_reused(criteo_file, tmp_path, monkeypatch):
    first = load(f"criteo:{criteo_file}", tmp_path)
    x, y = np.array(first.x), np.array(first.y)

    def no_build(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(raw_module, "build_cache", no_build)
    again = load(f"criteo:{criteo_file}", tmp_path)
    assert isinstance(again.x, np.memmap)
    np.testing.assert_array_equal(again.x, x)
    np.testing.assert_array_equal(again.y, y)
    assert again.field_dims == first.field_dims and again.field_names == first.field_names
    assert load_dataset(f"cache:{again.info['cache_dir']}").field_dims == first.field_dims
    # other options -> another cache; rebuild=True -> built again
    with pytest.raises(AssertionError, match="reused"):
        load(f"criteo:{criteo_file}", tmp_path, min_count=2)
    with pytest.raises(AssertionError, match="reused"):
        load(f"criteo:{criteo_file}", tmp_path, rebuild=True)


def test_small_blocks_give_the_same_result(criteo_file, tmp_path):
    whole = load(f"criteo:{criteo_file}", tmp_path / "a", min_count=1)
    blocks = load(f"criteo:{criteo_file}", tmp_path / "b", min_count=1, block_size=1024)
    np.testing.assert_array_equal(whole.x, blocks.x)
    np.testing.assert_array_equal(whole.y, blocks.y)
    assert load_vocab(whole) == load_vocab(blocks)


@pytest.mark.parametrize("kind", ["criteo", "avazu"])
def test_merging_the_value_tables_block_by_block_gives_the_same_result(
    kind, criteo_file, avazu_file, tmp_path, monkeypatch
):
    # Small blocks and a tiny merge pool: every block is merged into tables that already hold
    # values, so the ids of known values must stay put and the new ones follow.
    from fastme.data import encode

    path = criteo_file if kind == "criteo" else avazu_file
    whole = load(f"{kind}:{path}", tmp_path / "a", min_count=1)
    monkeypatch.setattr(encode, "MERGE_POOL", 1)
    merged = load(f"{kind}:{path}", tmp_path / "b", min_count=1, block_size=256)
    np.testing.assert_array_equal(whole.x, merged.x)
    np.testing.assert_array_equal(whole.y, merged.y)
    assert load_vocab(whole) == load_vocab(merged)
    assert whole.info["fields"] == merged.info["fields"]


def test_gzip_input_gives_the_same_result(criteo_file, avazu_file, tmp_path):
    import gzip

    for kind, path in (("criteo", criteo_file), ("avazu", avazu_file)):
        packed = tmp_path / (path.name + ".gz")
        packed.write_bytes(gzip.compress(path.read_bytes()))
        plain = load(f"{kind}:{path}", tmp_path / "p", min_count=1)
        unpacked = load(f"{kind}:{packed}", tmp_path / "z", min_count=1)
        np.testing.assert_array_equal(plain.x, unpacked.x)
        np.testing.assert_array_equal(plain.y, unpacked.y)
        assert plain.info["malformed"]["total"] == unpacked.info["malformed"]["total"] > 0


def test_integer_cells_are_validated_cell_by_cell(tmp_path):
    cats = ["c"] * 26
    lines = [
        criteo_line(1, [5] * 13, cats),
        criteo_line(0, ["0x10"] + [5] * 12, cats),
        criteo_line(0, [5] * 12 + ["1.5"], cats),
        criteo_line(1, [5, "+3"] + [5] * 11, cats),
    ]
    path = write(tmp_path / "ints.txt", "".join(lines))
    data = load(f"criteo:{path}", tmp_path, min_count=1)
    # "1.5" and "+3" are not integers; the hexadecimal 0x10 = 16 is (pyarrow parses it)
    assert len(data) == 2 and data.info["malformed"]["bad_integer"] == 2
    assert load_vocab(data)[0] == sorted(
        [math.floor(math.log(5) ** 2), math.floor(math.log(16) ** 2)]
    )
