"""fastme export: .pt2 and ONNX programs that load in a fresh process and equal the eager model."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastme.cli import main
from fastme.data import make_synthetic
from fastme.models import build, load_trained
from fastme.serve.export import export, load_pt2
from fastme.train import TrainConfig, train

DIMS = [5, 9, 3, 17, 4]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data = make_synthetic(1_000, field_dims=DIMS, min_count=0)
    torch.manual_seed(0)
    model = build("dcnv2", DIMS, 2, multi=True, hidden_dim=8)
    train(model, data, TrainConfig(epochs=1, batch_size=128, progress=False, verbose=False,
                                   out_dir=str(tmp / "run")))
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
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, check=True,
                   env={**os.environ, **(env or {})}, timeout=300)
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
    assert main(["export", str(run), "--format", "onnx", "--out",
                 str(tmp_path / "model.onnx")]) == 0
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
    assert main(["export", str(run), "--format", "onnx", "--bounds", "raise", "--out",
                 str(tmp_path / "x.onnx")]) == 2


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
    got, = run_fresh(code, tmp_path, [x], env={"TRITON_INTERPRET": "1"})
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
