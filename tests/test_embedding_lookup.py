"""The kernel backends of multi_embedding_lookup against the eager reference.

Runs every kernel backend available here: "triton" through Triton's CPU interpreter and "cpu" (the
C++ CPU kernels, every ISA the processor runs) without a GPU (TRITON_INTERPRET=1, set in
conftest.py), "triton" and "cuda" on a GPU machine. float64 forward
and table gradient match the reference to rounding; 16-bit tables are checked against float64
maths on the same values; both table-gradient paths (atomic, deterministic).
"""

import pytest
import torch

import fastme.ops as ops
from fastme.ops import _backend, _policy, bounds_check, reference

from kernel_backends import (
    BACKENDS,
    DEVICE,
    DTYPES,
    KERNEL_TESTS,
    NONDET_TOL,
    assert_close_to_reference,
    assert_matches_reference,
    check_registration,
    criteo_like_field_dims,
    cpu_isas,
    criteo_shapes_on_gpu,
    gpu_test,
    lookup_inputs,
    outputs_and_grads,
    relative_error,
    use_cpu_isa,
    with_backend,
)

pytestmark = KERNEL_TESTS

SHAPES = [  # batch, field_dims, num_sets, dim
    (1, [1], 1, 1),  # B = N = M = K = 1
    (7, [3, 1, 5], 2, 5),  # odd K, a field with one value
    (12, [2, 2, 2, 2], 3, 10),  # heavy duplication, Criteo's K
    (5, [6, 4], 1, 16),  # M = 1
    (80, [2, 2, 2, 2], 1, 3),  # several blocks of (sample, field) pairs
    (3, [3, 2, 2], 2, 50),  # K = 50 (NFwFM's base size)
]
GPU_SHAPES = SHAPES[:2] + [
    (64, [4, 1, 6, 3], 3, 10),
    (33, [2, 2], 4, 16),
    (17, [5, 5, 5], 1, 50),
    (300, [3, 1000], 3, 8),  # many duplicates in field 0, many chunks of the sorted scatter
]


def lookup(backend):
    return with_backend(ops.multi_embedding_lookup, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_table_gradient_match_reference_float64(backend, shape, index_dtype):
    _check_float64(backend, lookup_inputs(*shape, index_dtype=index_dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "index_dtype,offsets_dtype", [(torch.int32, torch.int64), (torch.int64, torch.int32)]
)
def test_mixed_index_dtypes(backend, index_dtype, offsets_dtype):
    _check_float64(
        backend,
        lookup_inputs(20, [4, 9, 2], 3, 6, index_dtype=index_dtype, offsets_dtype=offsets_dtype),
    )


def _check_float64(backend, inputs):
    out, _ = assert_close_to_reference(
        lookup(backend), reference.multi_embedding_lookup, inputs, rtol=1e-12, atol=1e-12
    )
    assert torch.equal(out, reference.multi_embedding_lookup(*inputs))  # a gather is exact


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    table, indices, offsets = lookup_inputs(4, [3, 2, 2], 2, 3)
    assert torch.autograd.gradcheck(
        lambda t: lookup(backend)(t, indices, offsets),
        (table.requires_grad_(),),
        fast_mode=True,
        nondet_tol=NONDET_TOL,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_tables(backend, dtype):
    inputs = lookup_inputs(9, [2, 3, 2], 3, 7, dtype=dtype)
    # duplicates are summed in float32 and rounded once: within one 16-bit ulp of the exact sum
    out = assert_matches_reference(
        lookup(backend),
        reference.multi_embedding_lookup,
        inputs,
        tol=1e-6 if dtype == torch.float32 else 1e-2,
    )
    assert torch.equal(out, reference.multi_embedding_lookup(*inputs))  # a gather is exact


@gpu_test
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_every_dtype_and_gradient_path_on_gpu(backend, shape, dtype, grad_mode):
    inputs = lookup_inputs(*shape, dtype=dtype)
    tol = {torch.float64: 1e-12, torch.float32: 2e-6}.get(dtype, 1e-2)
    out = assert_matches_reference(lookup(backend), reference.multi_embedding_lookup, inputs, tol)
    assert torch.equal(out, reference.multi_embedding_lookup(*inputs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_mode_gives_the_same_gradient(backend, monkeypatch):
    inputs = lookup_inputs(12, [2, 3], 2, 5, dtype=torch.float32)
    _, grad = outputs_and_grads(lookup(backend), *inputs)
    monkeypatch.setenv("FASTME_DETERMINISTIC", "1")
    _, grad_det = outputs_and_grads(lookup(backend), *inputs)
    torch.testing.assert_close(grad_det, grad, rtol=1e-6, atol=1e-6)


@gpu_test
@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_table_gradient_is_bitwise_reproducible(backend, monkeypatch):
    monkeypatch.setenv("FASTME_DETERMINISTIC", "1")
    inputs = lookup_inputs(4096, [3, 2, 50], 4, 10, dtype=torch.float32)
    runs = [outputs_and_grads(lookup(backend), *inputs)[1][0] for _ in range(3)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_torch_deterministic_flag_selects_the_fixed_order_path(monkeypatch):
    monkeypatch.delenv("FASTME_DETERMINISTIC", raising=False)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert not _policy.use_atomics(torch.float32)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert _policy.use_atomics(torch.float32) == (not previous)
    assert not _policy.use_atomics(torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    table, indices, offsets = lookup_inputs(6, [3, 4, 2], 2, 5)
    table_nc = table.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    indices_nc = indices.t().contiguous().t()
    assert not table_nc.is_contiguous() and not indices_nc.is_contiguous()
    assert_close_to_reference(
        lookup(backend),
        reference.multi_embedding_lookup,
        (table_nc, indices_nc, offsets),
        (table, indices, offsets),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_empty_batch(backend, dtype):
    table, indices, offsets = lookup_inputs(0, [3, 2], 2, 4, dtype=dtype)
    table.requires_grad_()
    out = lookup(backend)(table, indices, offsets)
    assert out.shape == (0, 2, 2, 4)
    out.sum().backward()
    assert table.grad.shape == table.shape and not table.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounds_check_modes(backend):
    table, indices, offsets = lookup_inputs(4, [3, 5], 2, 3)
    bad = indices.clone()
    bad[1, 1] = 5
    with pytest.raises(IndexError, match=r"indices\[1, 1\] = 5 is out of range for field 1"):
        lookup(backend)(table, bad, offsets)
    with bounds_check("clamp"), pytest.warns(RuntimeWarning, match="clamped"):
        out = lookup(backend)(table, bad, offsets)
    torch.testing.assert_close(out[1, :, 1], table[offsets[1] + 4])
    # "off": no check at all, but the kernels clamp the global row, so even wild indices read
    # inside the table (never an illegal access)
    wild = indices.clone()
    wild[0, 0], wild[2, 1], wild[3, 0] = -(10**6), 10**9, 3  # below, far above, next field
    with bounds_check("off"):
        out = lookup(backend)(table, wild, offsets)
    rows = (wild + offsets).clamp(0, table.shape[0] - 1)
    assert torch.equal(out, table[rows].permute(0, 2, 1, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_without_rows_is_refused_with_the_bounds_check_off(backend):
    """The kernels clamp rows into the table, which needs one: every lookup-based op refuses."""
    f64 = dict(dtype=torch.float64, device=DEVICE)
    table, weights = torch.zeros(0, 2, 3, **f64), torch.zeros(2, 2, 2, **f64)
    weight, bias = torch.zeros(1, 2, 6, 6, **f64), torch.zeros(1, 2, 6, **f64)
    indices = torch.zeros(4, 2, dtype=torch.int64, device=DEVICE)
    offsets = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    calls = {
        "multi_embedding_lookup": lambda: lookup(backend)(table, indices, offsets),
        "pooled_lookup": lambda: ops.pooled_lookup(table, indices, offsets, backend=backend),
        "pooled_lookup ": lambda: ops.pooled_lookup(
            table, indices, offsets, weights, backend=backend
        ),
        "lookup_cross_network": lambda: ops.lookup_cross_network(
            table, indices, offsets, weight, bias, backend=backend
        ),
    }
    with bounds_check("off"):
        for op, call in calls.items():
            # an op the backend has no kernels for runs the reference, which raises its own error
            runs_reference = (op.strip(), backend) not in _backend._IMPLEMENTATIONS
            with pytest.raises(
                RuntimeError if runs_reference else ValueError,
                match="index_select" if runs_reference else "table has 0 rows but indices is not",
            ):
                call()


@pytest.mark.parametrize("backend", ["triton", "cuda", "cpu"])
def test_op_registration(backend):
    table, indices, offsets = lookup_inputs(5, [3, 2, 2], 2, 3)
    grad = torch.randn(5, 2, 3, 3, dtype=torch.float64, device=DEVICE)
    check_registration(
        backend,
        "multi_embedding_lookup",
        (table.requires_grad_(), indices, offsets),
        [reference.multi_embedding_lookup(table, indices, offsets)],
    )
    check_registration(
        backend,
        "multi_embedding_lookup_backward",
        (grad, indices, offsets, table.shape[0]),
        [table],
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """The public op traces into one graph (validation, bounds check and the custom op), forward
    and backward, and gives the eager result."""
    table, indices, offsets = lookup_inputs(6, [3, 4], 2, 3)

    def loss(t):
        return (lookup(backend)(t, indices, offsets) ** 2).sum()

    assert_close_to_reference(
        torch.compile(loss, fullgraph=True, backend="aot_eager"), loss, (table,)
    )
    if DEVICE == "cuda":
        return  # a failing device-side assertion would poison the CUDA context of later tests
    # bounds check "error" inside the graph: an asynchronous assertion instead of a graph break
    with pytest.raises(RuntimeError, match="out of range"):
        bad = indices.clone()
        bad[0, 0] = 3
        torch.compile(
            lambda t: lookup(backend)(t, bad, offsets), fullgraph=True, backend="aot_eager"
        )(table)


@criteo_shapes_on_gpu
def test_criteo_shapes_on_gpu(backend, dtype, num_sets):
    """B=4096, N=39, K=10, realistic cardinalities (hot rows in the small fields)."""
    inputs = lookup_inputs(4096, criteo_like_field_dims(), num_sets, 10, dtype=dtype)
    out, (grad,) = outputs_and_grads(lookup(backend), *inputs)
    ref_out, (ref_grad,) = outputs_and_grads(
        reference.multi_embedding_lookup, inputs[0].double(), *inputs[1:]
    )
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=0)
    assert relative_error(grad, ref_grad) < (1e-5 if dtype == torch.float32 else 1e-2)


@gpu_test
def test_cuda_extension_reports_no_sticky_error():
    if "cuda" not in BACKENDS:
        pytest.skip("the cuda backend cannot run here")
    from fastme import _extension

    _extension.load().cuda_synchronize(torch.cuda.current_device())


_needs_cpu_kernels = pytest.mark.skipif(not cpu_isas(), reason="no compiled CPU kernels here")


@_needs_cpu_kernels
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES + [(600, [2, 3, 2000], 2, 33)], ids=str)
def test_cpu_kernels_equal_the_reference_bitwise_on_every_isa(isa, shape, dtype):
    """The forward is a copy and the CPU backward sums each row's duplicates in ascending pair
    order, the order of the reference's index_add_: both bit-identical, whatever the ISA
    (masked tails of odd K included)."""
    table, indices, offsets = lookup_inputs(*shape, dtype=dtype, device="cpu")
    with use_cpu_isa(isa):
        out, grads = outputs_and_grads(lookup("cpu"), table, indices, offsets)
    ref_out, ref_grads = outputs_and_grads(
        reference.multi_embedding_lookup, table, indices, offsets
    )
    assert torch.equal(out, ref_out)
    assert torch.equal(grads[0], ref_grads[0])


@_needs_cpu_kernels
@pytest.mark.parametrize("isa", cpu_isas())
def test_cpu_forward_copies_runs_of_every_length_on_every_isa(isa):
    """The gather copies each set's row as one run of K elements (two overlapping 32-byte moves
    for 32..64 bytes, masked or scalar tails otherwise) and prefetches rows ahead of the copy
    (past each thread's block of samples too): the reference's bits for every run length from 2
    to 280 bytes, int32 and int64 indices, with 1, 3 and 64 threads (more than samples)."""
    previous = torch.get_num_threads()
    try:
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            for k in range(1, 36):
                torch.set_num_threads((1, 3, 64)[k % 3])
                table, indices, offsets = lookup_inputs(
                    23, [5, 1, 900], 3, k, dtype=dtype, device="cpu"
                )
                indices = indices.int() if k % 2 else indices
                with use_cpu_isa(isa):
                    out = ops.multi_embedding_lookup(table, indices, offsets, backend="cpu")
                expect = reference.multi_embedding_lookup(table, indices, offsets)
                assert torch.equal(out, expect), (dtype, k)
    finally:
        torch.set_num_threads(previous)


@_needs_cpu_kernels
@pytest.mark.parametrize("threads", [1, 3, 8])
def test_cpu_table_gradient_is_the_same_for_every_thread_count(threads):
    """Rows are split into per-thread ranges (more than one range from 2048 pairs per thread):
    hot rows, rows on range boundaries and a cold large field give the reference's bits with any
    team size."""
    inputs = lookup_inputs(6000, [2, 7, 5000], 3, 10, dtype=torch.float32, device="cpu")
    ref = outputs_and_grads(reference.multi_embedding_lookup, *inputs)[1][0]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        grad = outputs_and_grads(lookup("cpu"), *inputs)[1][0]
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(grad, ref)


@_needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_16bit_table_gradient_is_summed_in_float32(dtype):
    """The hot rows of 16-bit tables (fields 0 and 1: thousands of duplicates each) are summed in
    float32 and rounded once: the exact sum of the same 16-bit terms, rounded to the table dtype
    (a sum in 16 bits would be off by many units in the last place)."""
    table, indices, offsets = lookup_inputs(5000, [2, 3, 9000], 2, 7, dtype=dtype, device="cpu")
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn((5000, 2, 3, 7), generator=g).to(dtype)
    grad = ops.multi_embedding_lookup(table.requires_grad_(), indices, offsets, backend="cpu")
    (grad,) = torch.autograd.grad(grad, table, grad_out)
    t64 = table.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(
        reference.multi_embedding_lookup(t64, indices, offsets), t64, grad_out.double()
    )
    hot = slice(0, 5)
    # float32 sums of ~2000 terms round to the exact sum's 16-bit value but for rare ties
    assert (grad[hot] != exact[hot].to(dtype)).sum() <= 2
    assert torch.equal(grad[5:], exact[5:].to(dtype))  # rows with few duplicates: exact


@_needs_cpu_kernels
def test_auto_picks_the_cpu_kernels_for_cpu_tensors(monkeypatch):
    from fastme.ops import _backend

    ops = sorted({op for op, _ in _backend._IMPLEMENTATIONS})
    for op in ops:  # every op has CPU kernels
        assert (
            _backend.resolve(op, "auto", torch.device("cpu"))
            is (_backend._IMPLEMENTATIONS[(op, "cpu")])
        )
    # an op without CPU kernels runs the reference
    monkeypatch.delitem(_backend._IMPLEMENTATIONS, ("cross_network", "cpu"))
    assert (
        _backend.resolve("cross_network", "cpu", torch.device("cpu"))
        is (_backend._IMPLEMENTATIONS[("cross_network", "reference")])
    )


@_needs_cpu_kernels
def test_cpu_isa_choice_is_checked():
    from fastme import _extension

    ext = _extension.load()
    assert ext.cpu_isa() in ext.cpu_supported_isas()
    assert ext.cpu_supported_isas()[0] == "generic"
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse9'"):
        ext.cpu_set_isa("sse9")
