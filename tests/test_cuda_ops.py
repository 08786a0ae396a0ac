"""The CUDA C++ ops against the eager reference, on a GPU: forward and every gradient, all dtypes
and index types, edge shapes (odd K, N=1, M=1, B=1, empty batch, duplicates, the largest index),
both table-gradient modes (atomic, deterministic), torch.compile, gradcheck, and the models on
backend="cuda". Everything here is skipped, with the reason, without a GPU and a CUDA build.
"""

import functools

import pytest
import torch

import fastme.models as fm
import fastme.ops as ops
from fastme import _extension
from fastme.ops import reference


def _skip_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch sees none)"
    if not _extension.built_with_cuda():
        return "fastme was built without CUDA kernels (no nvcc at build time)"
    ext = _extension.load()
    if ext.cuda_device_count() == 0:
        return f"the extension's CUDA runtime sees no device: {ext.cuda_runtime_status()}"
    return None


SKIP_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]

DEV = "cuda"
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# Relative error (Frobenius norm) allowed against the float64 reference of the same inputs.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 3e-3}
TF32_TOL = 5e-3
# Magnitude below which 16-bit errors count as absolute (inputs are O(1)): a tiny output that is
# the difference of O(1) terms cannot be accurate to a bf16 ulp of itself.
FLOOR = {torch.bfloat16: 0.5, torch.float16: 0.5}


@pytest.fixture(params=["atomic", "deterministic"])
def grad_mode(request, monkeypatch):
    """Both table-gradient paths (16-bit tables take the sorted path in both)."""
    monkeypatch.setenv("FASTME_DETERMINISTIC", "1" if request.param == "deterministic" else "0")
    return request.param


@pytest.fixture
def exact_fp32():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


@pytest.fixture
def tf32():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(previous)


def assert_rel(actual, expected, tol, what, floor=0.0):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.device == expected.device
    actual, expected = actual.detach().double(), expected.detach().double()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = max(float(expected.norm()), floor * expected.numel() ** 0.5, 1e-30)
    err = float((actual - expected).norm() / scale)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def lookup_inputs(batch, field_dims, sets, dim, dtype, index_dtype=torch.int64,
                  offsets_dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = torch.tensor(field_dims)
    table = torch.randn(int(dims.sum()), sets, dim, generator=g, dtype=torch.float64)
    indices = torch.stack([torch.randint(0, d, (batch,), generator=g) for d in field_dims], 1)
    if batch > 0:
        indices[0] = dims - 1  # the largest index of every field, i.e. the table's last row
    offsets = torch.cumsum(dims, 0) - dims
    return (table.to(DEV, dtype), indices.to(DEV, index_dtype), offsets.to(DEV, offsets_dtype))


def compare(cuda_fn, ref_fn, inputs, dtype, tol=None, seed=1):
    """Forward and the gradient of every floating input that requires grad, against the float64
    reference evaluated on the same (rounded) inputs."""
    tol = TOL[dtype] if tol is None else tol
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    ref_inputs = [t.detach().double().requires_grad_(t.requires_grad)
                  if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    ref_diff = [r for t, r in zip(inputs, ref_inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    floor = FLOOR.get(dtype, 0.0)
    out = cuda_fn(*inputs)
    ref = ref_fn(*ref_inputs)
    assert out.dtype == dtype
    assert_rel(out, ref, tol, "forward", floor)
    if not diff or ref.numel() == 0:
        return out
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = g.to(DEV)
    # allow_unused: with zero cross layers the reference never touches the (empty) weights.
    grads = torch.autograd.grad(out, diff, g.to(dtype), allow_unused=True)
    ref_grads = torch.autograd.grad(ref, ref_diff, g, allow_unused=True)
    for i, (a, e) in enumerate(zip(grads, ref_grads)):
        a = torch.zeros_like(diff[i]) if a is None else a
        e = torch.zeros_like(ref_diff[i]) if e is None else e
        assert a.dtype == diff[i].dtype
        assert_rel(a, e, tol, f"gradient of input {i}", floor)
    return out


LOOKUP_SHAPES = [  # batch, field_dims, sets, dim
    (1, [1], 1, 1),
    (5, [3, 7, 2], 2, 5),
    (64, [4, 1, 6, 3], 3, 10),
    (33, [2, 2], 4, 16),
    (17, [5, 5, 5], 1, 50),
    (40, [3, 9], 2, 7),
    (300, [3, 1000], 3, 8),  # many duplicates in field 0, many chunks in the sorted scatter
]


# ---- lookup -------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,field_dims,sets,dim", LOOKUP_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lookup_matches_reference(batch, field_dims, sets, dim, dtype, grad_mode):
    table, indices, offsets = lookup_inputs(batch, field_dims, sets, dim, dtype)
    table.requires_grad_(True)
    out = compare(lambda t, i, o: ops.multi_embedding_lookup(t, i, o, backend="cuda"),
                  reference.multi_embedding_lookup, [table, indices, offsets], dtype)
    # The forward is a copy: exact in every dtype.
    assert torch.equal(out.detach(), reference.multi_embedding_lookup(table.detach(), indices, offsets))


@pytest.mark.parametrize("index_dtype,offsets_dtype", [(torch.int32, torch.int32),
                                                       (torch.int32, torch.int64),
                                                       (torch.int64, torch.int32)])
def test_lookup_index_dtypes(index_dtype, offsets_dtype, grad_mode):
    table, indices, offsets = lookup_inputs(50, [4, 9, 2], 3, 6, torch.float32, index_dtype,
                                            offsets_dtype)
    table.requires_grad_(True)
    compare(lambda t, i, o: ops.multi_embedding_lookup(t, i, o, backend="cuda"),
            reference.multi_embedding_lookup, [table, indices, offsets], torch.float32)


def test_deterministic_table_gradient_is_bitwise_reproducible(monkeypatch):
    monkeypatch.setenv("FASTME_DETERMINISTIC", "1")
    table, indices, offsets = lookup_inputs(4096, [3, 2, 50], 4, 10, torch.float32)
    table.requires_grad_(True)
    g = torch.randn(4096, 4, 3, 10, device=DEV)
    runs = [torch.autograd.grad(ops.multi_embedding_lookup(table, indices, offsets, backend="cuda"),
                                table, g)[0] for _ in range(3)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    monkeypatch.setenv("FASTME_DETERMINISTIC", "0")
    atomic = torch.autograd.grad(ops.multi_embedding_lookup(table, indices, offsets, backend="cuda"),
                                 table, g)[0]
    assert_rel(atomic, runs[0].double(), 1e-6, "atomic vs sorted")


def test_torch_deterministic_flag_selects_sorted_path(monkeypatch):
    monkeypatch.delenv("FASTME_DETERMINISTIC", raising=False)
    from fastme.ops import _policy as _lib

    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert not _lib.use_atomics(torch.float32)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert _lib.use_atomics(torch.float32) == (not previous)
    assert not _lib.use_atomics(torch.bfloat16)


def test_lookup_noncontiguous_inputs():
    table, indices, offsets = lookup_inputs(20, [4, 5, 6], 2, 12, torch.float32)
    wide = torch.randn(table.shape[0], 2, 20, device=DEV)
    wide[:, :, :12] = table
    view = wide[:, :, :12].requires_grad_(False)  # not contiguous
    idx_view = indices.t().contiguous().t()
    assert not view.is_contiguous() and not idx_view.is_contiguous()
    out = ops.multi_embedding_lookup(view, idx_view, offsets, backend="cuda")
    assert torch.equal(out, reference.multi_embedding_lookup(table, indices, offsets))


def test_out_of_range_rows_are_clamped_in_kernel_with_bounds_check_off():
    table, indices, offsets = lookup_inputs(16, [4, 5], 2, 3, torch.float64)
    bad = indices.clone()
    bad[1, 0], bad[2, 1], bad[3, 0] = -7, 10_000, 4  # below, far above, into the next field
    rows = (bad + offsets).clamp(0, table.shape[0] - 1)
    previous = ops.get_bounds_check()
    ops.set_bounds_check("off")
    try:
        out = ops.multi_embedding_lookup(table, bad, offsets, backend="cuda")
        pooled = ops.pooled_lookup(table, bad, offsets, backend="cuda")
        torch.cuda.synchronize()
    finally:
        ops.set_bounds_check(previous)
    expected = table[rows].permute(0, 2, 1, 3)
    assert torch.equal(out, expected)
    assert_rel(pooled, reference.fm_pooling(expected), 1e-12, "pooled")


def test_empty_batch():
    for dtype in (torch.float32, torch.bfloat16):
        table, indices, offsets = lookup_inputs(0, [3, 4], 2, 5, dtype)
        table.requires_grad_(True)
        fw = torch.randn(2, 2, 2, device=DEV, dtype=dtype, requires_grad=True)
        out = ops.multi_embedding_lookup(table, indices, offsets, backend="cuda")
        assert out.shape == (0, 2, 2, 5)
        for pooled in (ops.pooled_lookup(table, indices, offsets, backend="cuda"),
                       ops.pooled_lookup(table, indices, offsets, fw, backend="cuda")):
            assert pooled.shape == (0, 2, 5)
        w = torch.randn(2, 2, 10, 10, device=DEV, dtype=dtype, requires_grad=True)
        b = torch.randn(2, 2, 10, device=DEV, dtype=dtype, requires_grad=True)
        cross = ops.lookup_cross_network(table, indices, offsets, w, b, backend="cuda")
        assert cross.shape == (0, 2, 10)
        (out.sum() + pooled.sum() + cross.sum()).backward()
        assert table.grad.abs().sum() == 0 and w.grad.abs().sum() == 0 and fw.grad.abs().sum() == 0


# ---- pooled lookup ------------------------------------------------------------------------------

POOL_SHAPES = LOOKUP_SHAPES[:-1] + [
    (6, [2] * 70, 2, 3),   # N = 70: field weights no longer staged in shared memory
    (5, [3, 4, 2, 6], 1, 200),  # K = 200: split into column chunks
]


@pytest.mark.parametrize("batch,field_dims,sets,dim", POOL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fm_pooled_lookup_matches_reference(batch, field_dims, sets, dim, dtype, grad_mode):
    table, indices, offsets = lookup_inputs(batch, field_dims, sets, dim, dtype)
    table.requires_grad_(True)
    compare(lambda t, i, o: ops.pooled_lookup(t, i, o, backend="cuda"),
            reference.pooled_lookup, [table, indices, offsets], dtype)


@pytest.mark.parametrize("batch,field_dims,sets,dim", POOL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fwfm_pooled_lookup_matches_reference(batch, field_dims, sets, dim, dtype, grad_mode):
    table, indices, offsets = lookup_inputs(batch, field_dims, sets, dim, dtype)
    table.requires_grad_(True)
    n = len(field_dims)
    fw = torch.randn(sets, n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fw = (fw / n).to(DEV, dtype).requires_grad_(True)
    compare(lambda t, i, o, r: ops.pooled_lookup(t, i, o, r, backend="cuda"),
            reference.pooled_lookup, [table, indices, offsets, fw], dtype)


def test_fwfm_weight_gradient_over_many_chunks():
    # A batch large enough for many partial weight gradients and several samples per tile.
    table, indices, offsets = lookup_inputs(3000, [7, 3, 11, 5, 2], 3, 10, torch.float64)
    table.requires_grad_(True)
    fw = torch.randn(3, 5, 5, device=DEV, dtype=torch.float64, requires_grad=True)
    compare(lambda t, i, o, r: ops.pooled_lookup(t, i, o, r, backend="cuda"),
            reference.pooled_lookup, [table, indices, offsets, fw], torch.float64)


# ---- cross network ------------------------------------------------------------------------------

CROSS_SHAPES = [  # batch, sets, dim, layers
    (1, 1, 1, 1),
    (7, 2, 6, 2),
    (70, 3, 65, 3),    # several row and column tiles, ragged edges
    (130, 1, 130, 4),
    (600, 2, 24, 2),   # the weight gradient is split over the batch
    (5, 2, 10, 0),     # no layers: identity
]


def cross_inputs(batch, sets, dim, layers, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, sets, dim, generator=g, dtype=torch.float64)
    w = torch.randn(layers, sets, dim, dim, generator=g, dtype=torch.float64) / max(dim, 1) ** 0.5
    b = torch.randn(layers, sets, dim, generator=g, dtype=torch.float64) * 0.1
    return [t.to(DEV, dtype).requires_grad_(True) for t in (x0, w, b)]


@pytest.mark.parametrize("batch,sets,dim,layers", CROSS_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_network_matches_reference(batch, sets, dim, layers, dtype, exact_fp32):
    tol = {torch.bfloat16: 4e-2, torch.float16: 6e-3}.get(dtype, TOL[dtype])
    compare(lambda x, w, b: ops.cross_network(x, w, b, backend="cuda"), reference.cross_network,
            cross_inputs(batch, sets, dim, layers, dtype), dtype, tol=tol * max(layers, 1))


@pytest.mark.parametrize("batch,sets,dim,layers", CROSS_SHAPES[:5])
def test_cross_network_tf32(batch, sets, dim, layers, tf32):
    compare(lambda x, w, b: ops.cross_network(x, w, b, backend="cuda"), reference.cross_network,
            cross_inputs(batch, sets, dim, layers, torch.float32), torch.float32,
            tol=TF32_TOL * layers)


def test_cross_network_without_grad_matches_training_forward():
    x0, w, b = cross_inputs(50, 2, 33, 4, torch.float64)
    with torch.no_grad():
        fast = ops.cross_network(x0, w, b, backend="cuda")  # ping-pong buffers, nothing saved
    assert_rel(fast, ops.cross_network(x0, w, b, backend="cuda").detach(), 0, "no-grad forward")


@pytest.mark.parametrize("batch,field_dims,sets,dim,layers", [
    (1, [1], 1, 1, 1), (9, [4, 1, 6], 2, 5, 3), (90, [3, 8, 2, 5], 3, 10, 4), (40, [2, 2], 1, 16, 2),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_lookup_cross_network_matches_reference(batch, field_dims, sets, dim, layers, dtype,
                                                grad_mode, exact_fp32):
    table, indices, offsets = lookup_inputs(batch, field_dims, sets, dim, dtype)
    table.requires_grad_(True)
    d = len(field_dims) * dim
    _, w, b = cross_inputs(1, sets, d, layers, dtype, seed=5)
    tol = {torch.bfloat16: 4e-2}.get(dtype, TOL[dtype]) * layers
    compare(lambda t, i, o, w_, b_: ops.lookup_cross_network(t, i, o, w_, b_, backend="cuda"),
            reference.lookup_cross_network, [table, indices, offsets, w, b], dtype, tol=tol)


# ---- autograd, compile, devices -----------------------------------------------------------------

def test_gradcheck_float64():
    # nondet_tol: atomic adds make repeated backward passes differ in the last bits.
    gradcheck = functools.partial(torch.autograd.gradcheck, nondet_tol=1e-12)
    table, indices, offsets = lookup_inputs(6, [3, 4, 2], 2, 3, torch.float64)
    table.requires_grad_(True)
    fw = torch.randn(2, 3, 3, device=DEV, dtype=torch.float64, requires_grad=True)
    gradcheck(lambda t: ops.multi_embedding_lookup(t, indices, offsets, backend="cuda"), (table,))
    gradcheck(lambda t: ops.pooled_lookup(t, indices, offsets, backend="cuda"), (table,))
    gradcheck(lambda t, r: ops.pooled_lookup(t, indices, offsets, r, backend="cuda"), (table, fw))
    x0, w, b = cross_inputs(5, 2, 6, 2, torch.float64)
    gradcheck(lambda x, w_, b_: ops.cross_network(x, w_, b_, backend="cuda"), (x0, w, b))


@pytest.fixture
def bounds_check_off():
    """The 'error' bounds check reads a flag back to the host: a graph break under fullgraph."""
    previous = ops.get_bounds_check()
    ops.set_bounds_check("off")
    yield
    ops.set_bounds_check(previous)


def test_torch_compile_fullgraph_matches_eager(bounds_check_off):
    table, indices, offsets = lookup_inputs(32, [4, 6, 3], 2, 4, torch.float32)
    table.requires_grad_(True)
    fw = torch.randn(2, 3, 3, device=DEV, requires_grad=True)
    w = (torch.randn(2, 2, 12, 12, device=DEV) / 4).requires_grad_(True)
    b = torch.zeros(2, 2, 12, device=DEV, requires_grad=True)

    def f(t, r, w_, b_):
        return (ops.multi_embedding_lookup(t, indices, offsets, backend="cuda").square().sum()
                + ops.pooled_lookup(t, indices, offsets, backend="cuda").sum()
                + ops.pooled_lookup(t, indices, offsets, r, backend="cuda").sum()
                + ops.lookup_cross_network(t, indices, offsets, w_, b_, backend="cuda").sum())

    params = (table, fw, w, b)
    eager = f(*params)
    eager_grads = torch.autograd.grad(eager, params)
    compiled = torch.compile(f, fullgraph=True)(*params)
    compiled_grads = torch.autograd.grad(compiled, params)
    assert_rel(compiled, eager.detach(), 1e-6, "compiled forward")
    for a, e in zip(compiled_grads, eager_grads):
        assert_rel(a, e, 1e-5, "compiled gradient")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    table, indices, offsets = lookup_inputs(20, [4, 5], 2, 6, torch.float64)
    table, indices, offsets = table.to("cuda:1"), indices.to("cuda:1"), offsets.to("cuda:1")
    table.requires_grad_(True)
    fw = torch.randn(2, 2, 2, device="cuda:1", dtype=torch.float64)
    with torch.cuda.device(0):  # the kernels must follow the tensors, not the current device
        out = ops.pooled_lookup(table, indices, offsets, fw, backend="cuda")
        (grad,) = torch.autograd.grad(out.sum(), table)
        x0, w, b = (t.detach().to("cuda:1") for t in cross_inputs(9, 2, 7, 2, torch.float64))
        cross = ops.cross_network(x0, w, b, backend="cuda")
    assert out.device == grad.device == cross.device == torch.device("cuda:1")
    ref = reference.pooled_lookup(table, indices, offsets, fw)
    assert_rel(out, ref, 1e-12, "forward on cuda:1")
    assert_rel(grad, torch.autograd.grad(ref.sum(), table)[0], 1e-12, "gradient on cuda:1")
    assert_rel(cross, reference.cross_network(x0, w, b), 1e-12, "cross network on cuda:1")


def test_synchronize_reports_no_error():
    _extension.load().cuda_synchronize(torch.cuda.current_device())


# ---- models -------------------------------------------------------------------------------------

MODEL_FIELD_DIMS = [3, 7, 20, 5, 1]


@pytest.mark.parametrize("name", sorted(fm.MODELS))
@pytest.mark.parametrize("multi", [False, True])
def test_models_on_cuda_backend_match_reference(name, multi, exact_fp32):
    torch.manual_seed(0)
    if name == "nfwfm":
        model = fm.NFwFM(MODEL_FIELD_DIMS, embed_dim=4, num_sets=2 if multi else 1, hidden_dim=16)
    else:
        model = fm.build(name, MODEL_FIELD_DIMS, 2, multi, hidden_dim=16)
    model = model.double().to(DEV).eval()
    with torch.no_grad():
        for p in model.parameters():  # make every path live (e.g. FinalMLP's zero bilinear)
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.stack([torch.randint(0, d, (12,), generator=g) for d in MODEL_FIELD_DIMS], 1).to(DEV)
    weights = torch.randn(12, generator=g, dtype=torch.float64).to(DEV)
    results = {}
    for backend in ("reference", "cuda"):
        model.backend = backend
        model.zero_grad()
        logits = model(x)
        (logits * weights).sum().backward()
        results[backend] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    ref_logits, ref_grads = results["reference"]
    logits, grads = results["cuda"]
    assert_rel(logits, ref_logits, 1e-10, f"{name} logits")
    for pname, grad in grads.items():
        assert_rel(grad, ref_grads[pname], 1e-9, f"{name} gradient of {pname}")


def test_model_trains_in_float32_on_cuda_backend():
    torch.manual_seed(0)
    model = fm.build("dcnv2", MODEL_FIELD_DIMS, 2, True, hidden_dim=16, backend="cuda").to(DEV)
    x = torch.stack([torch.randint(0, d, (64,)) for d in MODEL_FIELD_DIMS], 1).to(DEV)
    y = (x[:, 0] % 2).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
