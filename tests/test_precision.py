"""bf16 mixed precision (autocast) in the ops, the trainer, predict and export; --threads.

Tolerances: bfloat16 keeps 8 significant bits, so each rounding is within 2^-9 (0.2%) of the
value; a forward pass of a few layers rounds its inputs and weights once per matrix product, and
the float32 accumulation adds no error of its own. Ops are compared with 3% of the output's scale
(several roundings of terms that partly cancel); probabilities with 0.02 absolute (a logit error
of 0.08, which is 1% of a logit of 8, moves a probability by at most 0.02: sigmoid' <= 1/4).
"""

import copy
import importlib
import json
import os

import numpy as np
import pytest
import torch

import fastme.ops as ops
from fastme.cli import main
from fastme.cli.args import default_threads
from fastme.data import make_synthetic
from fastme.models import build
from fastme.serve.export import export, load_pt2
from fastme.serve.predict import Predictor
from fastme.train import TrainConfig, load_checkpoint, train
from fastme.train.checkpoint import run_identity
from fastme.train.trainer import ResumeError

DIMS = [5, 9, 3, 17, 4]
KERNELS = [b for b in ops.available_backends("cpu") if b != "reference"]
#: Kernel backends with a fused lookup + cross network of their own (the others run the reference).
CROSS_KERNELS = [
    b
    for b in KERNELS
    if "lookup_cross_network" in importlib.import_module(f"fastme.ops.{b}").BACKEND.ops()
]
BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


# ---- ops ----------------------------------------------------------------------------------------


def _op_inputs(seed=0, batch=8, sets=2, dim=3, layers=2):
    g = torch.Generator().manual_seed(seed)
    fields = len(DIMS)
    table = torch.randn(sum(DIMS), sets, dim, generator=g).requires_grad_()
    offsets = torch.tensor([0, *torch.tensor(DIMS).cumsum(0)[:-1].tolist()])
    indices = torch.stack([torch.randint(0, d, (batch,), generator=g) for d in DIMS], 1)
    d = fields * dim
    weight = (0.1 * torch.randn(layers, sets, d, d, generator=g)).requires_grad_()
    bias = (0.1 * torch.randn(layers, sets, d, generator=g)).requires_grad_()
    field_weights = torch.randn(sets, fields, fields, generator=g).requires_grad_()
    x0 = torch.randn(batch, sets, d, generator=g).bfloat16().requires_grad_()  # an activation
    return table, indices, offsets, weight, bias, field_weights, x0


CASES = {
    "lookup_cross_network": lambda t, i, o, w, b, f, x, be: ops.lookup_cross_network(
        t, i, o, w, b, backend=be
    ),
    "cross_network, bf16 x0": lambda t, i, o, w, b, f, x, be: ops.cross_network(
        x, w, b, backend=be
    ),
    "pooled_lookup (FwFM)": lambda t, i, o, w, b, f, x, be: ops.pooled_lookup(
        t, i, o, f, backend=be
    ),
    "fwfm_pooling, bf16 emb": lambda t, i, o, w, b, f, x, be: ops.fwfm_pooling(
        x.reshape(x.shape[0], x.shape[1], len(DIMS), -1), f, backend=be
    ),
    "multi_embedding_lookup": lambda t, i, o, w, b, f, x, be: ops.multi_embedding_lookup(
        t, i, o, backend=be
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_ops_run_under_autocast_close_to_float32(case, backend):
    """Under bf16 autocast every op runs on every backend, a bf16 activation meets float32
    weights (refused before: "must have the dtype of"), the result is within bf16 rounding of the
    float32 result, and the float32 parameters get float32 gradients."""
    inputs = _op_inputs()
    params = [inputs[k] for k in (0, 3, 4, 5)]
    with torch.no_grad():
        exact = CASES[case](
            *[t.double() if t.is_floating_point() else t for t in inputs], "reference"
        )
    with torch.autocast(**BF16):
        out = CASES[case](*inputs, backend)
    grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    scale = exact.abs().max().item()
    assert (out.double() - exact).abs().max().item() <= 3e-2 * scale
    assert all(g is None or g.dtype == torch.float32 for g in grads)


@pytest.mark.skipif(not CROSS_KERNELS, reason="no cross-network kernel on the CPU (needs triton)")
@pytest.mark.parametrize("backend", CROSS_KERNELS)
def test_kernel_cross_network_computes_in_bf16_under_autocast(backend):
    """The kernels honour autocast: the cross network's GEMMs take bf16 operands (its output is
    then bf16), while the table stays float32 and lookups stay exact."""
    table, indices, offsets, weight, bias, _, _ = _op_inputs()
    with torch.no_grad(), torch.autocast(**BF16):
        crossed = ops.lookup_cross_network(table, indices, offsets, weight, bias, backend=backend)
        looked_up = ops.multi_embedding_lookup(table, indices, offsets, backend=backend)
    assert crossed.dtype == torch.bfloat16 and table.dtype == torch.float32
    assert torch.equal(looked_up, ops.reference.multi_embedding_lookup(table, indices, offsets))


def test_mixed_dtypes_are_still_refused_outside_autocast():
    _, _, _, weight, bias, _, x0 = _op_inputs()
    with pytest.raises(TypeError, match="must have the dtype of the x0"):
        ops.cross_network(x0, weight, bias)


# ---- training -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    return make_synthetic(1_000, field_dims=DIMS, min_count=0)


def _train(data, out, **settings):
    torch.manual_seed(0)
    model = build("dcnv2", DIMS, 2, multi=True, hidden_dim=8)
    settings = {**dict(epochs=1, batch_size=128, progress=False, verbose=False), **settings}
    config = TrainConfig(out_dir=str(out), **settings)
    return model, train(model, data, config)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision")
    return {p: (tmp / p, *_train(data, tmp / p, precision=p)) for p in ("fp32", "bf16")}


def test_bf16_training_records_precision_and_keeps_float32_state(runs):
    out, model, results = runs["bf16"]
    assert results["config"]["precision"] == "bf16"
    assert json.loads((out / "results.json").read_text())["config"]["precision"] == "bf16"
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["config"]["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    moments = [
        v for state in ckpt["optimizer"]["state"].values() for k, v in state.items() if k != "step"
    ]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    # autocast changed the arithmetic: the same seed trains to other numbers
    fp32 = runs["fp32"][2]
    assert results["history"][0]["train_loss"] != fp32["history"][0]["train_loss"]
    assert abs(results["test_auc"] - fp32["test_auc"]) < 0.05


def test_resume_refuses_a_precision_change(runs, data):
    out = runs["fp32"][0]
    with pytest.raises(ResumeError, match="precision 'fp32' \\(now 'bf16'\\)"):
        _train(data, out, precision="bf16", resume=True, epochs=2)


def test_runs_recorded_before_precision_resume_as_fp32(data, tmp_path):
    """A last.pt written before the setting existed records no precision: it was fp32."""
    _train(data, tmp_path, epochs=1)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    del ckpt["config"]["precision"]
    torch.save(ckpt, tmp_path / "last.pt")
    _, results = _train(data, tmp_path, resume=True, epochs=2)
    assert results["epochs"] == 2
    with pytest.raises(ResumeError, match="precision"):
        _train(data, tmp_path, resume=True, epochs=3, precision="bf16")


def test_run_identity_names_precision_only_when_not_fp32():
    """fp32 runs keep the identity (and default --out) they had before the setting existed."""
    config = dict(TrainConfig().as_dict())
    identity = run_identity("dcnv2", "me", 2, {}, "synthetic", {}, config)
    assert "precision" not in identity["config"]
    bf16 = run_identity("dcnv2", "me", 2, {}, "synthetic", {}, {**config, "precision": "bf16"})
    assert bf16["config"]["precision"] == "bf16"


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")


# ---- predict and export -------------------------------------------------------------------------


def _x(rows=64):
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randint(0, d, (rows,), generator=g) for d in DIMS], 1).numpy()


def test_predict_bf16_close_to_fp32(runs):
    out = runs["bf16"][0]
    fp32 = Predictor(out, precision="fp32").logits(_x())
    bf16 = Predictor(out, precision="bf16").logits(_x())
    p32, p16 = (1 / (1 + np.exp(-z)) for z in (fp32, bf16))
    assert abs(p32 - p16).max() <= 0.02
    assert (fp32 != bf16).any()  # it did compute in bf16


@pytest.mark.parametrize("backend", ["reference", *(["cpu"] if "cpu" in KERNELS else [])])
def test_predict_with_bf16_tables_scores_like_bf16_with_float32_tables(runs, backend):
    """--table-dtype bf16 holds the tables in bfloat16 (half the memory); under bf16 autocast
    DCNv2 reads its gathered rows rounded to bf16 either way, so the scores barely move."""
    out = runs["bf16"][0]
    fp32_tables = Predictor(out, precision="bf16", backend=backend)
    bf16_tables = Predictor(out, precision="bf16", backend=backend, table_dtype="bf16")
    assert fp32_tables.model.embedding.weight.dtype == torch.float32
    assert bf16_tables.model.embedding.weight.dtype == torch.bfloat16
    a, b = fp32_tables.logits(_x()), bf16_tables.logits(_x())
    assert np.abs(a - b).max() <= 0.02 and np.isfinite(b).all()


def test_bf16_tables_need_bf16_precision(runs, tmp_path, capsys):
    out = runs["bf16"][0]
    with pytest.raises(ValueError, match="--table-dtype bf16 needs --precision bf16"):
        Predictor(out, table_dtype="bf16")
    with pytest.raises(ValueError, match="table dtype must be one of"):
        Predictor(out, precision="bf16", table_dtype="fp16")
    argv = ["predict", str(out), "--data", "synthetic", "--table-dtype", "bf16"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastme predict: error: --table-dtype bf16 needs --precision bf16")


def test_export_bf16_pt2_round_trip_and_onnx_refused(runs, tmp_path, capsys):
    out = runs["bf16"][0]
    meta = export(out, tmp_path / "bf16.pt2", precision="bf16")
    export(out, tmp_path / "fp32.pt2")
    assert meta["precision"] == "bf16" and meta["checked_max_difference"] <= 1e-6
    x = torch.from_numpy(_x())
    program16, saved = load_pt2(tmp_path / "bf16.pt2")
    program32, _ = load_pt2(tmp_path / "fp32.pt2")
    with torch.no_grad():
        p16, p32 = program16(x), program32(x)
    assert saved["precision"] == "bf16" and p16.dtype == torch.float32
    assert (p16 - p32).abs().max().item() <= 0.02 and not torch.equal(p16, p32)
    # the graph (reference ops) computes in bf16 like the eager reference model under autocast
    model = Predictor(out, backend="reference").model
    with torch.no_grad(), torch.autocast(**BF16):
        eager = torch.sigmoid(model(x).float())
    assert (p16 - eager).abs().max().item() <= 1e-6
    code = main(["export", str(out), "--out", str(tmp_path / "m.onnx"), "--precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and "ONNX export computes in fp32 only" in err
    assert len([line for line in err.splitlines() if line.startswith("fastme export")]) == 1
    assert not (tmp_path / "m.onnx").exists()


# ---- threads ------------------------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_flag_sets_torch_threads_and_says_so(runs, tmp_path, capsys, restore_threads):
    torch.set_num_threads(2)
    out = runs["fp32"][0]
    assert main(["analyze", str(out), "--out", str(tmp_path / "a"), "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("threads:")]
    assert len(said) == 1 and said[0].startswith("threads: 1 (--threads)")
    # export sets them too, and prints only what it exported
    torch.set_num_threads(2)
    assert main(["export", str(out), "--out", str(tmp_path / "m.pt2"), "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert "threads:" not in capsys.readouterr().out


def test_default_threads(monkeypatch, capsys, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads, why = default_threads()
    assert 1 <= threads <= len(os.sched_getaffinity(0)) and why


@pytest.mark.skipif("cpu" not in KERNELS, reason="no compiled CPU kernels here")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_fused_lookup_cross_gathers_x0_in_the_autocast_dtype_for_inference(dtype, monkeypatch):
    """Under autocast without gradients the cpu backend runs its fused lookup + cross network
    with the weights cast and x_0 gathered straight into the autocast dtype (no float32 x_0 and
    cast): the bits of the unfused lookup -> cast -> cross network, eager and compiled."""
    from fastme.ops.cpu import cross

    gathers = []
    monkeypatch.setattr(
        cross,
        "lookup_forward_to",
        lambda *args, _real=cross.lookup_forward_to: gathers.append(args[-1]) or _real(*args),
    )
    table, indices, offsets, weight, bias, _, _ = _op_inputs(batch=37, sets=3, dim=5)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        fused = ops.lookup_cross_network(table, indices, offsets, weight, bias, backend="cpu")
        x0 = ops.multi_embedding_lookup(table, indices, offsets, backend="cpu")
        unfused = ops.cross_network(x0.reshape(37, 3, -1), weight, bias, backend="cpu")
        compiled = torch.compile(
            lambda *a: ops.lookup_cross_network(*a, backend="cpu"), fullgraph=True
        )(table, indices, offsets, weight, bias)
    assert gathers == [dtype, dtype]  # eager, then the compiled graph's call of the same op
    assert fused.dtype == dtype
    assert torch.equal(fused, unfused) and torch.equal(compiled, unfused)


@pytest.mark.skipif("cpu" not in KERNELS, reason="no compiled CPU kernels here")
def test_cpu_gather_into_16_bits_rounds_as_torch_on_every_isa():
    """The float32 -> bfloat16 / float16 gather rounds each element as ``Tensor.to``: ties to
    even, infinities, subnormals and values past the 16-bit range, on every ISA."""
    from fastme import _extension
    from fastme.ops.cpu.lookup import lookup_forward, lookup_forward_to

    ext = _extension.load()
    g = torch.Generator().manual_seed(0)
    table = torch.randn(600, 2, 19, generator=g) * torch.logspace(-42, 38, 600).view(-1, 1, 1)
    ties = torch.arange(2**16, 2**16 + 600 * 38, dtype=torch.int32) << 15  # low 16 bits 0x8000
    table.view(-1)[: ties.numel()] = ties.view(torch.float32)
    table[0, 0, :3] = torch.tensor([float("inf"), -float("inf"), 7e4])
    indices = torch.randint(0, 600, (300, 1), generator=g)
    indices[: 600 // 2, 0] = torch.arange(300)
    offsets = torch.tensor([0])
    previous = ext.cpu_isa()
    try:
        for isa in ext.cpu_supported_isas():
            ext.cpu_set_isa(isa)
            for dtype in (torch.bfloat16, torch.float16):
                got = lookup_forward_to(table, indices, offsets, dtype)
                expect = lookup_forward(table, indices, offsets).to(dtype)
                assert torch.equal(got.view(torch.int16), expect.view(torch.int16)), (isa, dtype)
    finally:
        ext.cpu_set_isa(previous)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_eval_models_see_new_weights_and_statistics_after_the_cached_ones(backend):
    """Eval models derive weights (folded BatchNorms, bf16 casts) from the parameters: a
    load_state_dict or a training step (whose fused Adam and BatchNorm statistics update in
    place without bumping version counters) must be seen by the next call."""
    if backend not in ops.available_backends("cpu"):
        pytest.skip("no compiled CPU kernels here")
    dims = [7, 3, 11, 5]
    x = torch.randint(0, 3, (33, 4))
    torch.manual_seed(0)
    model = build("dcnv2", dims, 2, multi=True, backend=backend).eval()
    other = build("dcnv2", dims, 2, multi=True, backend=backend)
    other.train()
    other(x).sum().backward()  # BatchNorm statistics differ from the model's
    other.eval()
    for precision in ("fp32", "bf16"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            with torch.inference_mode():
                before = model(x)
                model(x)
            model.load_state_dict(other.state_dict())
            with torch.inference_mode():
                after = model(x)
                expected = other(x)
            with torch.no_grad():  # the cache is not used with gradients on either way
                assert torch.equal(after, expected)
        assert not torch.equal(before, after)
        # a fused Adam step and the BatchNorm statistics' update, in place, without version bumps
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
        model(x).sum().backward()
        optimizer.step()
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            with torch.inference_mode():
                stepped = model(x)
            fresh = copy.deepcopy(model)
            with torch.inference_mode():
                assert torch.equal(stepped, fresh(x))
        model.load_state_dict(build("dcnv2", dims, 2, multi=True).state_dict())


def test_export_with_bf16_tables_halves_the_program_and_scores_alike(runs, tmp_path, capsys):
    """export --table-dtype bf16 (with --precision bf16): the tables are bfloat16 in the
    program, the file about half the size, the scores those of bf16 precision with float32
    tables within bf16 rounding; without bf16 precision it is refused, exit 2, no file."""
    out = runs["bf16"][0]
    code = main(
        ["export", str(out), "--out", str(tmp_path / "t16.pt2"), "--precision", "bf16",
         "--table-dtype", "bf16"]
    )  # fmt: skip
    said = capsys.readouterr().out
    assert code == 0 and "bf16, bf16 tables" in said
    export(out, tmp_path / "t32.pt2", precision="bf16")
    program16, saved = load_pt2(tmp_path / "t16.pt2")
    program32, _ = load_pt2(tmp_path / "t32.pt2")
    assert saved["table_dtype"] == "bf16"
    size16, size32 = (tmp_path / "t16.pt2").stat().st_size, (tmp_path / "t32.pt2").stat().st_size
    table_bytes = Predictor(out).model.embedding.weight.numel() * 4
    assert size32 - size16 >= 0.4 * table_bytes
    x = torch.from_numpy(_x())
    with torch.no_grad():
        assert (program16(x) - program32(x)).abs().max().item() <= 0.02
    argv = ["export", str(out), "--out", str(tmp_path / "no.pt2"), "--table-dtype", "bf16"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastme export: error: --table-dtype bf16 needs --precision bf16")
    assert not (tmp_path / "no.pt2").exists()
