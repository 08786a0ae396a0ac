"""Bad raw files, bad caches and concurrent preprocessing: every fault costs only itself, is
counted, or is refused with an error naming the file."""

import gzip
import json
import multiprocessing
import warnings
from pathlib import Path

import numpy as np
import pytest

from fastme.data import load_dataset, load_vocab, preprocess
from fastme.data.dataset import load_cache
from fastme.data.formats.avazu import AVAZU_COLUMNS
from fastme.data.formats.criteo import CRITEO_FIELD_NAMES
from fastme.data.text import MalformedRowsWarning

HEADER = ",".join(AVAZU_COLUMNS) + "\n"


def avazu_line(i, hour="14102100", click=None, site="s%d"):
    cells = [
        str(i),
        str(click if click is not None else i % 2),
        hour,
        "1005",
        "0",
        site % (i % 3),
    ] + [f"v{j}" for j in range(18)]
    return ",".join(cells) + "\n"


def criteo_line(i, cat="c%d"):
    return "\t".join([str(i % 2)] + [str(i % 5)] * 13 + [cat % (i % 4)] * 26) + "\n"


def load(kind, path, tmp_path, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = preprocess(kind, path, tmp_path / "cache", progress=False, min_count=1, **options)
    return data, [str(w.message) for w in caught if issubclass(w.category, MalformedRowsWarning)]


def test_a_stray_quote_costs_nothing_but_its_cell(tmp_path):
    lines = [avazu_line(i) for i in range(202)]
    lines[5] = lines[5].replace(",s2,", ',"s2,')  # a cell that opens a quote and never closes it
    path = tmp_path / "train.csv"
    path.write_text(HEADER + "".join(lines))
    data, messages = load("avazu", path, tmp_path)
    assert len(data) == 202 and data.info["malformed"]["total"] == 0 and not messages
    site = data.field_names.index("site_id")
    assert '"s2' in load_vocab(data)[site]


def test_impossible_avazu_hours_are_counted_as_bad(tmp_path):
    hours = ["14022900", "14023100", "14043100", "14102124", "14102100", "16022900"]
    path = tmp_path / "train.csv"
    path.write_text(HEADER + "".join(avazu_line(i, h) for i, h in enumerate(hours)))
    data, messages = load("avazu", path, tmp_path)
    assert len(data) == 2  # 2014-10-21 00h and 2016-02-29 (a leap day)
    assert data.info["malformed"]["bad_hour"] == 4
    assert "bad hour 4" in messages[0] and "14022900" in messages[0]


@pytest.mark.parametrize("kind", ["criteo", "avazu"])
def test_bytes_that_are_not_utf8_cost_only_their_line(kind, tmp_path, capfd):
    if kind == "criteo":
        lines = [criteo_line(i).encode() for i in range(50)]
        lines[7] = lines[7].replace(b"c3", b"c\xff3")  # a bad byte in a full line
        lines.insert(20, b"0\t\xe9\t3\n")  # and in a short line
    else:
        lines = [HEADER.encode()] + [avazu_line(i).encode() for i in range(50)]
        lines[8] = lines[8].replace(b"v3", b"v\xff3")
        lines.insert(20, b"1,\xe9\n")
    path = tmp_path / "raw.txt"
    path.write_bytes(b"".join(lines))
    data, messages = load(kind, path, tmp_path)
    bad = data.info["malformed"]
    assert len(data) == 49 and (bad["bad_encoding"], bad["column_count"]) == (1, 1)
    assert "not UTF-8 1" in messages[0]
    assert "Exception ignored" not in capfd.readouterr().err
    assert not data.info["source"]["utf8"]


def test_truncated_or_corrupt_gzip_names_the_file(tmp_path):
    text = "".join(criteo_line(i) for i in range(3000)).encode()
    packed = gzip.compress(text)
    truncated = tmp_path / "truncated.txt.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(packed[:200] + b"\x00" * 50 + packed[250:])
    for path in (truncated, corrupt):
        with pytest.raises(ValueError, match=f"{path.name} is damaged"):
            load("criteo", path, tmp_path)
    assert not list((tmp_path / "cache").glob("*/meta.json"))  # nothing half-built is kept


def test_compression_is_recognised_by_content(tmp_path):
    text = "".join(criteo_line(i) for i in range(40)).encode()
    plain = tmp_path / "plain.txt"
    plain.write_bytes(text)
    hidden = tmp_path / "no_suffix"
    hidden.write_bytes(gzip.compress(text))
    a, _ = load("criteo", plain, tmp_path)
    b, _ = load("criteo", hidden, tmp_path)
    np.testing.assert_array_equal(a.x, b.x)
    archive = tmp_path / "train.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(ValueError, match="zip archive; unpack it first"):
        load("criteo", archive, tmp_path)


def test_an_edit_that_keeps_size_and_mtime_is_not_served_from_the_old_cache(tmp_path):
    import os

    path = tmp_path / "train.txt"
    path.write_text("".join(criteo_line(i) for i in range(40)))
    first, _ = load("criteo", path, tmp_path)
    stat = path.stat()
    path.write_text("".join(criteo_line(i, cat="d%d") for i in range(40)))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p / rsync -t do
    assert path.stat().st_size == stat.st_size
    second, _ = load("criteo", path, tmp_path)
    assert load_vocab(second)[13] == ["d0", "d1", "d2", "d3"]
    assert second.info["cache_dir"] != first.info["cache_dir"]
    # touching the file keeps its cache
    os.utime(path)
    assert load("criteo", path, tmp_path)[0].info["cache_dir"] == second.info["cache_dir"]


def small_cache(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("".join(criteo_line(i) for i in range(40)))
    data, _ = load("criteo", path, tmp_path)
    return data.info["cache_dir"]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate_x", "x.npy is missing, truncated"),
        ("index", "outside"),
        ("label", "label 7.0, not 0 or 1"),
        ("field_dims", "outside"),
        ("rows", "meta.json describes"),
    ],
)
def test_a_damaged_cache_is_refused_at_load(tmp_path, damage, message):
    from pathlib import Path

    cache = Path(small_cache(tmp_path))
    load_cache(cache)  # valid, and stamped as validated
    if damage == "truncate_x":
        raw = (cache / "x.npy").read_bytes()
        (cache / "x.npy").write_bytes(raw[: len(raw) // 2])
    elif damage in ("index", "label"):
        name = "x.npy" if damage == "index" else "y.npy"
        array = np.load(cache / name)
        array.reshape(-1)[3] = 10_000 if damage == "index" else 7
        np.save(cache / name, array)
    else:
        meta = json.loads((cache / "meta.json").read_text())
        if damage == "field_dims":
            meta["field_dims"][0] = 1
        else:
            meta["num_rows"] -= 1
        (cache / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(f"cache:{cache}")
    assert str(cache) in str(error.value) and "delete the directory" in str(error.value)


def _load_in_child(spec, cache_dir, options, queue):
    import time

    from fastme.data.encode import Encoder

    real, slept = Encoder.add, []

    def slow_add(self, *args):  # a longer build, so that the two processes overlap in it
        if not slept:
            slept.append(time.sleep(3))
        return real(self, *args)

    Encoder.add = slow_add
    try:
        data = load_dataset(spec, cache_dir=cache_dir, progress=False, **options)
        queue.put(("ok", data.info["cache_dir"], len(data)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(exc), 0))


def load_in_two_processes(spec, cache_dir, options):
    """Two processes loading ``spec`` at once (the first block of a build is slowed down);
    their outcomes: ("ok", cache_dir, rows) or ("error", message, 0)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    children = [
        ctx.Process(target=_load_in_child, args=(spec, cache_dir, options, queue)) for _ in range(2)
    ]
    for child in children:
        child.start()
    outcomes = [queue.get(timeout=300) for _ in children]
    for child in children:
        child.join(60)
    return outcomes


def test_two_processes_preprocessing_one_file_share_one_cache(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("".join(criteo_line(i) for i in range(2_000)))
    outcomes = load_in_two_processes(f"criteo:{path}", tmp_path / "c", {"min_count": 1})
    assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
    assert outcomes[0][1:] == outcomes[1][1:] and outcomes[0][2] == 2_000


@pytest.mark.parametrize("kind", ["parquet", "criteo"])
def test_two_processes_building_one_multi_file_cache_share_it(kind, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for d in range(2):
        if kind == "parquet":
            pq.write_table(
                pa.table(
                    {
                        "label": pa.array([i % 2 for i in range(600)], pa.int8()),
                        "site": [f"s{i % 3}" for i in range(600)],
                        "ad": [i % 7 for i in range(600)],
                    }
                ),
                tmp_path / f"day_{d}.parquet",
            )
        else:
            (tmp_path / f"day_{d}").write_text("".join(criteo_line(i) for i in range(600)))
    options = {"batch_rows": 100} if kind == "parquet" else {"min_count": 1}
    outcomes = load_in_two_processes(f"{kind}:{tmp_path}/day_*", tmp_path / "c", options)
    assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
    assert outcomes[0][1:] == outcomes[1][1:] and outcomes[0][2] == 1_200
    assert not list((tmp_path / "c").glob("*.partial"))


def test_kaggle_csv_criteo_is_recognised(tmp_path):
    header = "Id,Label," + ",".join(CRITEO_FIELD_NAMES) + "\n"
    path = tmp_path / "train.csv"
    path.write_text(
        header + "".join(f"{i}," + criteo_line(i).replace("\t", ",") for i in range(10))
    )
    with pytest.raises(ValueError, match="Kaggle competition's comma-separated") as error:
        load("criteo", path, tmp_path)
    assert "cut -d, -f2- | tr , " in str(error.value)


def test_criteo_summary_names_only_its_own_reasons(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("".join(criteo_line(i) for i in range(10)) + "1\t2\n")
    _, messages = load("criteo", path, tmp_path)
    assert "wrong column count 1" in messages[0] and "hour" not in messages[0]


def test_crlf_line_endings_read_as_lf(tmp_path):
    text = "".join(criteo_line(i) for i in range(30))
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_text(text)
    crlf.write_bytes(text.replace("\n", "\r\n").encode())
    a, b = load("criteo", lf, tmp_path)[0], load("criteo", crlf, tmp_path)[0]
    np.testing.assert_array_equal(a.x, b.x)
    assert load_vocab(a) == load_vocab(b)


def test_a_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    path = tmp_path / "train.txt"
    path.write_text("".join(criteo_line(i) for i in range(30)))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(OSError, match="cannot write the criteo cache .*GB are free.*cache-dir"):
        load("criteo", path, tmp_path)
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_a_byte_order_mark_and_blank_lines_are_not_rows(tmp_path):
    avazu = tmp_path / "bom.csv"
    text = HEADER + "".join(avazu_line(i) for i in range(9))
    avazu.write_bytes(b"\xef\xbb\xbf" + text.encode())
    criteo = tmp_path / "bom.txt"
    lines = [criteo_line(i) for i in range(9)]
    criteo.write_bytes(b"\xef\xbb\xbf" + "".join(lines[:4] + ["\n", "\n"] + lines[4:]).encode())
    for kind, path in (("avazu", avazu), ("criteo", criteo)):
        data, messages = load(kind, path, tmp_path)
        assert len(data) == 9 and data.info["malformed"]["total"] == 0 and not messages


def test_several_raw_files_skip_only_the_lines_that_are_not_utf8(tmp_path):
    days = tmp_path / "days"
    days.mkdir()
    for day in range(2):
        lines = [criteo_line(i).encode() for i in range(20)]
        if day == 1:
            lines[15] = lines[15].replace(b"c3", b"c\xff3")
        (days / f"day_{day}.txt").write_bytes(b"".join(lines))
    with pytest.warns(MalformedRowsWarning, match="not UTF-8 1"):
        data = load_dataset(
            f"criteo:{days}", cache_dir=tmp_path / "cache", min_count=1, progress=False
        )
    assert len(data) == 39 and data.info["malformed"]["bad_encoding"] == 1


def test_a_failed_build_leaves_no_lock_and_no_cache_root_a_good_one_no_lock(tmp_path):
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(gzip.compress("".join(criteo_line(i) for i in range(300)).encode())[:-40])
    with pytest.raises(ValueError, match="damaged.gz is damaged"):
        load("criteo", damaged, tmp_path)
    assert not (tmp_path / "cache").exists()  # made for this build, removed with its lock
    good = tmp_path / "train.txt"
    good.write_text("".join(criteo_line(i) for i in range(30)))
    data, _ = load("criteo", good, tmp_path)
    built = Path(data.info["cache_dir"]).name
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [built]  # and no lock file
    with pytest.raises(ValueError, match="damaged.gz is damaged"):
        load("criteo", damaged, tmp_path)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the root holds a cache: it stays
