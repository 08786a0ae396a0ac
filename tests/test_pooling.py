"""The kernel backends of pooled_lookup (lookup fused with FM or field-weighted pooling) and of
fm_pooling / fwfm_pooling (over gathered embeddings) against the eager reference: forward, table
(or embedding) gradient and field-weight gradient, float64 and 16-bit, both table-gradient paths."""

import pytest
import torch

import fastme.ops as ops
from fastme.ops import _backend, bounds_check, reference

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
    field_weights,
    gpu_test,
    lookup_inputs,
    outputs_and_grads,
    use_cpu_isa,
    with_backend,
)

pytestmark = KERNEL_TESTS

SHAPES = [  # batch, field_dims, num_sets, dim
    (1, [1], 1, 1),  # B = N = M = K = 1
    (7, [3, 1, 5], 2, 5),  # odd K
    (10, [2, 2, 2, 2, 2], 3, 10),
    (4, [3, 4], 1, 16),  # M = 1
    (3, [2, 3, 2], 2, 50),  # K = 50 (NFwFM's base size)
    (100, [3] * 18, 1, 3),  # N > 16; several column blocks per program
    (5, [2] * 70, 2, 3),  # N = 70: FwFM in three field blocks of 32
    (6, [3] * 256, 2, 3),  # N = 256: FwFM in 4 x 4 tiles of 64 fields
]
GPU_SHAPES = SHAPES[:3] + [
    (64, [4, 1, 6, 3], 3, 10),
    (33, [2, 2], 4, 16),
    (40, [3, 9], 2, 7),
    (6, [2] * 70, 2, 3),  # N = 70: field weights no longer staged in shared memory
    (5, [3, 4, 2, 6], 1, 200),  # K = 200: split into column chunks
]
# Relative error allowed against float64 maths on the same values; 16-bit errors count as
# absolute below 0.5 (inputs are O(1)): a tiny output that is the difference of O(1) terms cannot
# be accurate to a 16-bit ulp of itself.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 3e-3}
FLOOR = {torch.bfloat16: 0.5, torch.float16: 0.5}


def pooled(backend):
    return with_backend(ops.pooled_lookup, backend)


def pooled_inputs(shape, weighted, **kwargs):
    inputs = lookup_inputs(*shape, **kwargs)
    if not weighted:
        return inputs
    n = len(shape[1])
    return (
        *inputs,
        field_weights(shape[2], n, dtype=inputs[0].dtype, device=inputs[0].device) / max(n, 1),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-N{len(s[1])}-M{s[2]}-K{s[3]}")
def test_forward_and_gradients_match_reference_float64(backend, shape, index_dtype, weighted):
    out, _ = assert_close_to_reference(
        pooled(backend),
        reference.pooled_lookup,
        pooled_inputs(shape, weighted, index_dtype=index_dtype),
        rtol=1e-12,
        atol=1e-12,
    )
    assert out.shape == (shape[0], shape[2], shape[3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
def test_gradcheck(backend, weighted):
    table, indices, offsets, *weights = pooled_inputs((4, [3, 2, 2], 2, 3), weighted)
    inputs = (table.requires_grad_(), *(w.requires_grad_() for w in weights))
    assert torch.autograd.gradcheck(
        lambda t, *w: pooled(backend)(t, indices, offsets, *w),
        inputs,
        fast_mode=True,
        nondet_tol=NONDET_TOL,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision(backend, weighted, dtype, matmul_precision):
    """16-bit/float32 inputs against float64 maths on the same (rounded) values."""
    matmul_precision("highest")
    inputs = pooled_inputs((12, [3, 2, 4, 2], 3, 6), weighted, dtype=dtype)
    assert_matches_reference(
        pooled(backend), reference.pooled_lookup, inputs, TOL[dtype], FLOOR.get(dtype, 0.0)
    )


@gpu_test
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_every_dtype_and_gradient_path_on_gpu(
    backend, shape, dtype, weighted, grad_mode, matmul_precision
):
    matmul_precision("highest")
    assert_matches_reference(
        pooled(backend),
        reference.pooled_lookup,
        pooled_inputs(shape, weighted, dtype=dtype),
        TOL[dtype],
        FLOOR.get(dtype, 0.0),
    )


@gpu_test
@pytest.mark.parametrize("backend", BACKENDS)
def test_fwfm_weight_gradient_over_many_chunks(backend):
    """A batch large enough for many partial weight gradients and several samples per tile."""
    inputs = pooled_inputs((3000, [7, 3, 11, 5, 2], 3, 10), weighted=True)
    assert_matches_reference(pooled(backend), reference.pooled_lookup, inputs, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
def test_non_contiguous_inputs(backend, weighted):
    table, indices, offsets, *weights = pooled_inputs((6, [3, 4, 2], 2, 5), weighted)
    table_nc = table.transpose(1, 2).contiguous().transpose(1, 2)
    weights_nc = [w.transpose(1, 2).contiguous().transpose(1, 2) for w in weights]
    assert not table_nc.is_contiguous() and not any(w.is_contiguous() for w in weights_nc)
    assert_close_to_reference(
        pooled(backend),
        reference.pooled_lookup,
        (table_nc, indices.t().contiguous().t(), offsets, *weights_nc),
        (table, indices, offsets, *weights),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_empty_batch(backend, dtype):
    table, indices, offsets, weights = pooled_inputs((0, [3, 2], 2, 4), True, dtype=dtype)
    table.requires_grad_()
    weights.requires_grad_()
    outs = [pooled(backend)(table, indices, offsets, *w) for w in ((), (weights,))]
    assert all(out.shape == (0, 2, 4) for out in outs)
    sum(out.sum() for out in outs).backward()
    assert not table.grad.any() and not weights.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
def test_out_of_range_indices_read_the_clamped_row_with_bounds_check_off(backend, weighted):
    if ("pooled_lookup", backend) not in _backend._IMPLEMENTATIONS:
        pytest.skip(f"{backend} runs the reference for this op, which clamps nothing")
    table, indices, offsets, *weights = pooled_inputs((5, [3, 4], 2, 3), weighted)
    wild = indices.clone()
    wild[1, 0], wild[3, 1], wild[2, 0] = -(10**6), 10**9, 3  # below, far above, into field 1
    rows = (wild + offsets).clamp(0, table.shape[0] - 1)
    with bounds_check("off"):
        out = pooled(backend)(table, wild, offsets, *weights)
    no_offsets = torch.zeros_like(offsets)  # the clamped global rows, looked up directly
    torch.testing.assert_close(out, reference.pooled_lookup(table, rows, no_offsets, *weights))
    with pytest.raises(IndexError, match="out of range"):
        pooled(backend)(table, wild, offsets)


def test_mismatched_dtypes_are_rejected():
    table, indices, offsets, weights = pooled_inputs((3, [2, 2], 1, 4), True)
    with pytest.raises(TypeError, match="field_weights must have the dtype of the table"):
        ops.pooled_lookup(table, indices, offsets, weights.float())
    with pytest.raises(TypeError, match="field_weights must have the dtype of the embeddings"):
        ops.fwfm_pooling(reference.multi_embedding_lookup(table, indices, offsets), weights.float())


@pytest.mark.parametrize("backend", ["triton", "cuda", "cpu"])
def test_op_registration(backend):
    table, indices, offsets, weights = pooled_inputs((5, [3, 2, 2], 2, 3), True)
    grad = torch.randn(5, 2, 3, dtype=torch.float64, device=DEVICE)
    table.requires_grad_()
    expected = reference.pooled_lookup(table, indices, offsets).detach()
    check_registration(backend, "fm_pooled_lookup", (table, indices, offsets), [expected])
    check_registration(
        backend,
        "fwfm_pooled_lookup",
        (table, indices, offsets, weights.requires_grad_()),
        [expected],
    )
    check_registration(
        backend, "fm_pooled_lookup_backward", (grad, table, indices, offsets), [table]
    )
    check_registration(
        backend,
        "fwfm_pooled_lookup_backward",
        (grad, table, indices, offsets, weights),
        [table, weights],
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """FM and FwFM pooled lookups inside torch.compile(fullgraph=True): no graph break, the
    eager loss gradients."""
    compiler = "inductor" if DEVICE == "cuda" else "aot_eager"
    table, indices, offsets, weights = pooled_inputs((6, [3, 4, 2], 2, 3), True)

    def loss(t, w):
        return (
            pooled(backend)(t, indices, offsets).square().sum()
            + pooled(backend)(t, indices, offsets, w).sum()
        )

    assert_close_to_reference(
        torch.compile(loss, fullgraph=True, backend=compiler), loss, (table, weights)
    )


# ---- the CPU kernels --------------------------------------------------------------------------

_needs_cpu_kernels = pytest.mark.skipif(not cpu_isas(), reason="no compiled CPU kernels here")


@_needs_cpu_kernels
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
@pytest.mark.parametrize(
    "shape",
    SHAPES + [(300, [2, 5, 3, 400] + [3] * 35, 4, 50)],  # N = 39, K = 50: Criteo's NFwFM shape
    ids=lambda s: f"B{s[0]}-N{len(s[1])}-M{s[2]}-K{s[3]}",
)
def test_cpu_kernels_match_reference_on_every_isa(isa, shape, weighted):
    """Each ISA's loops (register tiles, their row and vector remainders, padded K) against the
    reference in float64: output, table gradient, field-weight gradient (over several ranges of
    samples at B=300)."""
    assert ("pooled_lookup", "cpu") in _backend._IMPLEMENTATIONS
    inputs = pooled_inputs(shape, weighted, device="cpu")
    with use_cpu_isa(isa):
        assert_close_to_reference(
            pooled("cpu"), reference.pooled_lookup, inputs, rtol=1e-12, atol=1e-12
        )


@_needs_cpu_kernels
@pytest.mark.parametrize("threads", [3, 8])
def test_cpu_gradients_are_the_same_for_every_thread_count(threads):
    """The table gradient (rows owned by one thread; several ranges at B=5000) and the
    field-weight gradient (fixed ranges of samples, summed in order) do not depend on the team
    size: the bits of one thread."""
    inputs = pooled_inputs((5000, [2, 7, 300, 5], 2, 10), True, dtype=torch.float32, device="cpu")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_grads(pooled("cpu"), *inputs)
        torch.set_num_threads(threads)
        many = outputs_and_grads(pooled("cpu"), *inputs)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one[0], many[0])
    assert all(torch.equal(a, b) for a, b in zip(one[1], many[1], strict=True))


# ---- FM / FwFM pooling of gathered embeddings ---------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1), (7, 2, 3, 5), (4, 3, 18, 2), (0, 2, 3, 4)], ids=str
)
def test_pooling_of_gathered_embeddings_matches_reference_float64(backend, weighted, shape):
    b, m, n, k = shape
    emb = torch.randn(shape, dtype=torch.float64, device=DEVICE)
    weights = (field_weights(m, n),) if weighted else ()
    public, ref = (
        (ops.fwfm_pooling, reference.fwfm_pooling)
        if weighted
        else (ops.fm_pooling, reference.fm_pooling)
    )
    out, _ = assert_close_to_reference(
        with_backend(public, backend), ref, (emb, *weights), rtol=1e-12, atol=1e-12
    )
    assert out.shape == (b, m, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pooling_of_gathered_embeddings_low_precision(backend):
    emb = torch.randn(9, 2, 5, 4, device=DEVICE).to(torch.bfloat16)
    weights = field_weights(2, 5, dtype=torch.bfloat16) / 5
    assert_matches_reference(
        with_backend(ops.fm_pooling, backend), reference.fm_pooling, (emb,), 2e-2, 0.5
    )
    assert_matches_reference(
        with_backend(ops.fwfm_pooling, backend), reference.fwfm_pooling, (emb, weights), 2e-2, 0.5
    )


# ---- GPU only -----------------------------------------------------------------------------------


@criteo_shapes_on_gpu
def test_criteo_shapes_on_gpu(backend, dtype, num_sets):
    """NFwFM at Criteo size: B=4096, N=39, K=50, realistic cardinalities with hot rows."""
    field_dims = criteo_like_field_dims()
    table, indices, offsets = lookup_inputs(4096, field_dims, num_sets, 50, dtype=dtype)
    weights = field_weights(num_sets, len(field_dims), dtype=dtype)
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3  # float32 may use TF32
    for w in ((), (weights,)):
        assert_matches_reference(
            pooled(backend), reference.pooled_lookup, (table, indices, offsets, *w), tol
        )


@gpu_test
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_device(backend):
    """The kernels follow the tensors, not the current device."""
    table, indices, offsets, weights = pooled_inputs((20, [4, 5], 2, 6), True, device="cuda:1")
    with torch.cuda.device(0):
        out, grads = assert_close_to_reference(
            pooled(backend), reference.pooled_lookup, (table, indices, offsets, weights)
        )
    assert out.device == grads[0].device == torch.device("cuda:1")
