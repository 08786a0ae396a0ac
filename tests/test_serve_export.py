"""fastme export: .pt2 and ONNX programs that load in a fresh process and equal the eager model."""

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fastme.cli import main
from fastme.data import make_synthetic
from fastme.models import build
from fastme.serve.export import export, load_pt2
from fastme.train import TrainConfig, load_trained, train

DIMS = [5, 9, 3, 17, 4]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data = make_synthetic(1_000, field_dims=DIMS, min_count=0)
    torch.manual_seed(0)
    model = build("dcnv2", DIMS, 2, multi=True, hidden_dim=8)
    train(
        model,
        data,
        TrainConfig(
            epochs=1, batch_size=128, progress=False, verbose=False, out_dir=str(tmp / "run")
        ),
    )
    return tmp / "run"


def inputs():
    """Batches of 1 and 7 rows; the second has out-of-range indices (-1 and one past a field)."""
    g = torch.Generator().manual_seed(3)
    x = torch.stack([torch.randint(0, d, (8,), generator=g) for d in DIMS], 1)
    x[2, 1], x[5, 3] = -1, DIMS[3]
    return x[:1], x[1:]


def eager(run, x):
    """The eager model's probabilities, an out-of-range index taking its field's OOV index."""
    model, _ = load_trained(run)
    dims = torch.tensor(DIMS)
    x = torch.where((x < 0) | (x >= dims), dims - 1, x)  # synthetic data: OOV = the last index
    with torch.no_grad():
        return torch.sigmoid(model(x)).numpy()


def run_fresh(code, tmp_path, arrays, env=None):
    """Run ``code`` in a new interpreter; it reads in{i}.npy and writes out{i}.npy."""
    for i, a in enumerate(arrays):
        np.save(tmp_path / f"in{i}.npy", a.numpy())
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        check=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    return [np.load(tmp_path / f"out{i}.npy") for i in range(len(arrays))]


def test_pt2_runs_without_fastme_with_any_batch_size(run, tmp_path):
    path = tmp_path / "model.pt2"
    meta = export(run, path, "pt2")
    assert meta["field_dims"] == DIMS and meta["oov_index"] == [d - 1 for d in DIMS]
    code = """
        import sys
        sys.modules["fastme"] = None  # any import of fastme fails
        import numpy as np, torch
        program = torch.export.load("model.pt2")
        for i in range(2):
            x = torch.from_numpy(np.load(f"in{i}.npy"))
            np.save(f"out{i}.npy", program.module()(x).detach().numpy())
    """
    batches = inputs()
    for x, got in zip(batches, run_fresh(code, tmp_path, batches)):
        np.testing.assert_allclose(got, eager(run, x), rtol=1e-6, atol=1e-7)
    module, saved = load_pt2(path)  # the metadata travels inside the file
    x = torch.tensor(saved["example_input"])
    np.testing.assert_allclose(module(x).detach().numpy(), saved["example_output"], rtol=1e-6)


def test_pt2_bounds_raise(run, tmp_path):
    export(run, tmp_path / "strict.pt2", "pt2", bounds="raise")
    module, _ = load_pt2(tmp_path / "strict.pt2")
    ok, bad = inputs()
    module(ok)
    with pytest.raises(RuntimeError, match="out of range"):
        module(bad)


def test_onnx_keeps_the_oov_rule_and_dynamic_batch(run, tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    assert (
        main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "model.onnx")]) == 0
    )
    code = """
        import numpy as np, onnxruntime as ort
        session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
        for i in range(2):
            x = np.load(f"in{i}.npy").astype(np.int64)
            np.save(f"out{i}.npy", session.run(None, {"x": x})[0])
    """
    batches = inputs()
    for x, got in zip(batches, run_fresh(code, tmp_path, batches)):
        np.testing.assert_allclose(got, eager(run, x), rtol=1e-5, atol=1e-6)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(props["fastme"])["field_dims"] == DIMS
    assert (
        main(
            [
                "export",
                str(run),
                "--format",
                "onnx",
                "--bounds",
                "raise",
                "--out",
                str(tmp_path / "x.onnx"),
            ]
        )
        == 2
    )


def test_pt2_traced_with_triton_loads_after_import_fastme(run, tmp_path):
    pytest.importorskip("triton")
    from fastme.ops import available_backends

    if "triton" not in available_backends("cpu"):
        pytest.skip("the Triton interpreter is not enabled")
    export(run, tmp_path / "triton.pt2", "pt2", backend="triton")
    code = """
        import numpy as np, torch
        import fastme  # registers every fastme:: custom op
        program = torch.export.load("triton.pt2")
        x = torch.from_numpy(np.load("in0.npy"))
        np.save("out0.npy", program.module()(x).detach().numpy())
    """
    x = inputs()[1]
    (got,) = run_fresh(code, tmp_path, [x], env={"TRITON_INTERPRET": "1"})
    np.testing.assert_allclose(got, eager(run, x), rtol=1e-5, atol=1e-6)
    # Without Triton the program still loads; running it says why it cannot
    blocked = """
        import sys
        sys.modules["triton"] = None
        import torch
        import fastme
        program = torch.export.load("triton.pt2")
        try:
            program.module()(torch.zeros(2, 5, dtype=torch.long))
        except Exception as exc:
            assert "triton kernels, which cannot run here" in str(exc), exc
        else:
            raise AssertionError("ran without Triton")
        import numpy as np
        np.save("out0.npy", np.zeros(1))
    """
    run_fresh(blocked, tmp_path, [x])


def test_cli_errors_are_messages(run, tmp_path, capsys):
    if not torch.cuda.is_available():
        out = str(tmp_path / "x.pt2")
        assert main(["export", str(run), "--backend", "cuda", "--out", out]) == 2
        assert "fastme export: error: backend='cuda' needs CUDA" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none"), "--out", str(tmp_path / "x.pt2")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- the format from the file name; failures; quiet output -------------------------------------


def test_format_follows_the_extension_and_a_mismatch_is_refused(run, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    import onnx

    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))  # ONNX, not a .pt2 archive
    assert main(["export", str(run), "--out", str(tmp_path / "m.pt2")]) == 0
    load_pt2(tmp_path / "m.pt2")
    capsys.readouterr()
    for argv, message in (
        (["--out", "x.onnx", "--format", "pt2"], "format pt2 does not match the output file"),
        (["--out", "x.bin"], "must end in .pt2 or .onnx"),
        (["--out", "x"], "must end in .pt2 or .onnx"),
    ):
        argv[1] = str(tmp_path / argv[1])
        assert main(["export", str(run)] + argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastme export: error: ") and message in err
        assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt2"]


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_a_failed_export_leaves_no_file_and_keeps_the_old_one(
    run, tmp_path, capsys, monkeypatch, fmt
):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    export_module = importlib.import_module("fastme.serve.export")  # (not the function)

    out = tmp_path / f"model.{fmt}"
    out.write_bytes(b"the model in service")

    def differs(path, atol=1e-6):
        assert Path(path) != out and Path(path).is_file()  # checked before it is in place
        raise AssertionError(f"{path}: outputs differ from the eager model's by 0.5")

    monkeypatch.setattr(export_module, "check_roundtrip", differs)
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "outputs differ" in capsys.readouterr().err
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise RuntimeError("the exporter broke\nwith a long story")

    monkeypatch.setattr(torch.export, "export", broken)
    monkeypatch.setattr(torch.onnx, "export", broken)
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "fastme export: error: RuntimeError: the exporter broke [...]\n"
    assert out.read_bytes() == b"the model in service"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no partial file left


def test_onnx_export_says_only_what_it_did(run, tmp_path, capfd, caplog):
    pytest.importorskip("onnxscript")
    with caplog.at_level("WARNING"):  # torch's log handler holds the stderr of its import
        assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    out, err = capfd.readouterr()
    assert err == ""  # no torchvision notes, no pytree deprecation
    assert out.startswith("exported dcnv2 ME x2") and out.count("\n") == 1


def test_missing_onnx_packages_name_the_install_from_a_checkout(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install -e '.[export]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_synthetic_data_has_no_encoding(run, tmp_path):
    meta = export(run, tmp_path / "m.pt2")
    assert meta["encoding"]["file"] is None and "synthetic" in meta["encoding"]["note"]
    assert load_pt2(tmp_path / "m.pt2")[1]["encoding"] == meta["encoding"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]  # no sidecar


# ---- raw rows scored without fastme ------------------------------------------------------------


def random_criteo(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ints = [str(v) if rng.random() > 0.2 else "" for v in rng.integers(-1, 40, 13)]
        cats = [f"{v:06x}" if rng.random() > 0.1 else "" for v in rng.integers(0, 5, 26)]
        rows.append([str(int(rng.random() < 0.4))] + ints + cats)
    return rows


def train_raw(tmp, kind, text, **options):
    from fastme.data import load_dataset

    raw = tmp / f"train.{kind}"
    raw.write_text(text)
    data = load_dataset(
        f"{kind}:{raw}", cache_dir=tmp / "cache", min_count=2, progress=False, **options
    )
    torch.manual_seed(0)
    model = build("dnn", data.field_dims, 2, multi=True, hidden_dim=8)
    train(
        model,
        data,
        TrainConfig(
            epochs=1, batch_size=64, progress=False, verbose=False, out_dir=str(tmp / "run")
        ),
    )
    return tmp / "run"


SCORE_WITHOUT_FASTME = """
    import json, sys
    import numpy as np
    import raw_scoring
    for i, (model, data) in enumerate(json.load(open("jobs.json"))):
        layout, ids, probs = raw_scoring.Scorer(model).score_file(data)
        np.save(f"probs{i}.npy", probs)
        json.dump([str(v) for v in ids], open(f"ids{i}.json", "w"))
    assert "fastme" not in sys.modules and "torch" not in sys.modules, "imported fastme/torch"
"""


def score_without_fastme(tmp_path, jobs):
    """Score (model, raw file) pairs with a copy of raw_scoring.py in a fresh interpreter that
    never imports fastme or torch: [(ids, probabilities)]."""
    import shutil

    from fastme.serve import raw_scoring

    where = tmp_path / "service"
    where.mkdir()
    shutil.copy(raw_scoring.__file__, where / "raw_scoring.py")
    (where / "jobs.json").write_text(json.dumps([[str(m), str(d)] for m, d in jobs]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCORE_WITHOUT_FASTME)],
        cwd=where,
        check=True,
        env=env,
        timeout=300,
    )
    return [
        (json.loads((where / f"ids{i}.json").read_text()), np.load(where / f"probs{i}.npy"))
        for i in range(len(jobs))
    ]


def predicted(run, kind, path, out):
    """fastme predict's (ids, probabilities; NaN where it leaves the probability empty)."""
    import csv

    from fastme.serve.predict import predict

    predict(run, f"{kind}:{path}", out)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r[0] for r in rows], np.array([float(r[1]) if r[1] else np.nan for r in rows])


def assert_same_scores(ours, theirs, malformed):
    (ids, probs), (want_ids, want) = ours, theirs
    assert ids == want_ids
    assert np.flatnonzero(np.isnan(want)).tolist() == malformed
    np.testing.assert_array_equal(np.isnan(probs), np.isnan(want))
    assert np.nanmax(np.abs(probs - want)) <= 1e-6


def test_raw_criteo_rows_scored_by_onnxruntime_without_fastme_equal_predict(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    rows = random_criteo(300, seed=4)
    run = train_raw(tmp_path, "criteo", "".join("\t".join(r) + "\n" for r in rows))
    meta = export(run, tmp_path / "model.onnx")
    sidecar = tmp_path / "model.onnx.encoding.json"
    assert meta["encoding"]["file"] == sidecar.name and sidecar.is_file()
    test = [r[1:] for r in rows[:12]]  # the test file's layout: no label
    test[0][16] = "unseen"  # C3: a value never seen
    test[1][:3], test[1][20:] = ["", "", ""], [""] * 19  # empty cells, trailing tabs
    test[2][4] = "12x"  # I5: not an integer
    test[3][1], test[3][2], test[3][5] = "0x1F", "007", "-1"  # hex, leading zeros, negative
    test[4][6] = "123456789"  # a large integer: unseen bucket
    lines = ["\t".join(r).encode() for r in test]
    lines[7] = b"\t".join([b"\xff"] + lines[7].split(b"\t")[1:])  # not UTF-8
    lines.insert(9, b"1\t2")  # wrong column count
    (tmp_path / "test.txt").write_bytes(b"\n".join(lines) + b"\n")
    labeled = [list(r) for r in rows[:5]]
    labeled[1][0] = "2"  # a bad label
    labeled[3][25] = ""  # C12 empty
    (tmp_path / "train_like.txt").write_text("".join("\t".join(r) + "\n" for r in labeled))
    ours = score_without_fastme(
        tmp_path,
        [
            (tmp_path / "model.onnx", tmp_path / "test.txt"),
            (tmp_path / "model.onnx", tmp_path / "train_like.txt"),
        ],
    )
    assert_same_scores(
        ours[0],
        predicted(run, "criteo", tmp_path / "test.txt", tmp_path / "p0.csv"),
        malformed=[2, 7, 9],
    )
    assert_same_scores(
        ours[1],
        predicted(run, "criteo", tmp_path / "train_like.txt", tmp_path / "p1.csv"),
        malformed=[1],
    )
    from fastme.serve.raw_scoring import Scorer

    other = tmp_path / "other.json"  # the sidecar of another export: refused
    other.write_text(sidecar.read_text().replace('"min_count":2', '"min_count":3'))
    with pytest.raises(ValueError, match="not the encoding this model was exported with"):
        Scorer(tmp_path / "model.onnx", encoding_path=other)
    # a failed export over them leaves the model and its sidecar as they were, and no other file
    sidecar.write_text("the sidecar in service")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def differs(path, atol=1e-6):
        raise AssertionError("outputs differ")

    monkeypatch.setattr(importlib.import_module("fastme.serve.export"), "check_roundtrip", differs)
    with pytest.raises(AssertionError):
        export(run, tmp_path / "model.onnx")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("hour", ["split", "raw"])
def test_raw_avazu_rows_scored_without_fastme_equal_predict(tmp_path, hour):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from fastme.data.formats.avazu import AVAZU_COLUMNS

    rng = np.random.default_rng(5)
    lines = []
    for i in range(200):
        cells = [str(10**19 + i), str(int(rng.random() < 0.3)), f"1410{21 + i % 3:02d}{i % 24:02d}"]
        cells += [f"v{v}" if rng.random() > 0.1 else "" for v in rng.integers(0, 4, 21)]
        lines.append(",".join(cells))
    header = ",".join(AVAZU_COLUMNS)
    run = train_raw(tmp_path, "avazu", header + "\n" + "\n".join(lines) + "\n", hour=hour)
    export(run, tmp_path / "model.onnx")
    test = [line.split(",") for line in lines[:8]]
    test[0][5] = "never-seen"  # site_id
    test[1][2] = "14022900"  # no 29 February in 2014: a bad hour
    test[2][6:9] = ["", "", ""]  # empty cells
    test[3][1] = "yes"  # a bad label
    test[4][2] = "14102723"  # a day not in training
    (tmp_path / "test").write_text(header + "\n" + "\n".join(",".join(r) for r in test) + "\n")
    (ours,) = score_without_fastme(tmp_path, [(tmp_path / "model.onnx", tmp_path / "test")])
    assert_same_scores(
        ours,
        predicted(run, "avazu", tmp_path / "test", tmp_path / "p.csv"),
        malformed=[1, 3] if hour == "split" else [3],
    )


def test_integer_cells_are_validated_and_bucketed_as_the_reader_does():
    import pyarrow as pa

    from fastme.data.text import integer_field
    from fastme.serve.export import INTEGER_PATTERN
    from fastme.serve.raw_scoring import RawEncoder

    encoder = RawEncoder(
        {
            "format": "fastme-raw-encoding",
            "version": 1,
            "dataset": "criteo",
            "delimiter": "\t",
            "label": "label",
            "columns": [],
            "fields": [],
            "integer": {"pattern": INTEGER_PATTERN},
            "hour": {"format": ""},
        }
    )
    good = [
        "0",
        "1",
        "2",
        "3",
        "-1",
        "-7",
        "007",
        "0x1F",
        "0X1f",
        "20",
        "1000000",
        "123456789012345678",
        "0xfffffffffffffff",
    ]
    bad = ["+5", " 5", "5 ", "1e3", "abc", "1.0", "-", "0x", "\u0663", "1_000"]
    for cells in (good, good + bad):  # the reader's two paths: all cells parse, or some do not
        want, rows_ok, _ = integer_field(pa.array(cells + [None]))
        ok, tokens = encoder._integers(cells + [""])
        expect_ok = [True] * (len(cells) + 1) if rows_ok is None else rows_ok.to_pylist()
        assert ok.tolist() == expect_ok
        want = want.cast(pa.int64()).to_pylist()
        assert [t for t, k in zip(tokens, ok) if k] == [w for w, k in zip(want, ok) if k]
