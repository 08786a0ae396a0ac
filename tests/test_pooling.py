"""The kernel backends of pooled_lookup (lookup fused with FM or field-weighted pooling) against
the eager reference: forward, table gradient and field-weight gradient, float64 and 16-bit."""

import pytest
import torch

import fastme.ops as ops
from fastme.ops import reference

from kernel_backends import (BACKENDS, DEVICE, NONDET_TOL, criteo_like_field_dims,
                             criteo_shapes_on_gpu, KERNEL_TESTS)

pytestmark = KERNEL_TESTS


def random_inputs(batch, field_dims, num_sets, dim, *, dtype=torch.float64,
                  index_dtype=torch.int64, seed=0):
    """Table, indices (heavy duplication; row 0 takes every field's largest index), offsets and
    [M, N, N] field weights ~ N(0, 1) as in NFwFM."""
    g = torch.Generator().manual_seed(seed)
    dims = torch.tensor(field_dims)
    n = len(field_dims)
    table = torch.randn(int(dims.sum()), num_sets, dim, generator=g, dtype=torch.float64)
    weights = torch.randn(num_sets, n, n, generator=g, dtype=torch.float64)
    indices = torch.stack([torch.randint(0, d, (batch,), generator=g) for d in field_dims], 1)
    if batch:
        indices[0] = dims - 1
    offsets = torch.cumsum(dims, 0) - dims
    return (table.to(DEVICE, dtype), indices.to(DEVICE, index_dtype),
            offsets.to(DEVICE, index_dtype), weights.to(DEVICE, dtype))


SHAPES = [  # batch, field_dims, num_sets, dim
    (1, [1], 1, 1),              # B = N = M = K = 1
    (7, [3, 1, 5], 2, 5),        # odd K
    (10, [2, 2, 2, 2, 2], 3, 10),
    (4, [3, 4], 1, 16),          # M = 1
    (3, [2, 3, 2], 2, 50),       # K = 50 (NFwFM's base size)
    (100, [3] * 18, 1, 3),       # N > 16; several column blocks per program
]


def pooled_and_grads(fn, table, indices, offsets, weights):
    """Output and the gradients w.r.t. table (and weights when given) for a random grad_out."""
    table = table.detach().requires_grad_()
    inputs = (table,) if weights is None else (table, weights.detach().requires_grad_())
    out = fn(table, indices, offsets, None if weights is None else inputs[1])
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, inputs, grad_out) if out.numel() else ()
    return out.detach(), grads


def _kernel(backend):
    return lambda t, x, o, w: ops.pooled_lookup(t, x, o, w, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_reference_float64(backend, shape, index_dtype, weighted):
    table, indices, offsets, weights = random_inputs(*shape, index_dtype=index_dtype)
    weights = weights if weighted else None
    out, grads = pooled_and_grads(_kernel(backend), table, indices, offsets, weights)
    ref_out, ref_grads = pooled_and_grads(reference.pooled_lookup, table, indices, offsets, weights)
    assert out.shape == (shape[0], shape[2], shape[3])
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
def test_gradcheck(backend, weighted):
    table, indices, offsets, weights = random_inputs(4, [3, 2, 2], 2, 3)
    inputs = (table.requires_grad_(),) + ((weights.requires_grad_(),) if weighted else ())
    assert torch.autograd.gradcheck(
        lambda t, *w: ops.pooled_lookup(t, indices, offsets, *w, backend=backend), inputs,
        fast_mode=True, nondet_tol=NONDET_TOL)


def relative_error(a, b):
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fm", "fwfm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision(backend, weighted, dtype):
    """16-bit/float32 inputs against float64 maths on the same (rounded) values."""
    table, indices, offsets, weights = random_inputs(12, [3, 2, 4, 2], 3, 6, dtype=dtype)
    weights = weights if weighted else None
    out, grads = pooled_and_grads(_kernel(backend), table, indices, offsets, weights)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    ref_out, ref_grads = pooled_and_grads(
        reference.pooled_lookup, table.double(), indices, offsets,
        None if weights is None else weights.double())
    # float32 products may run on TF32 tensor cores when torch allows it
    tol = 5e-3 if dtype == torch.bfloat16 or torch.get_float32_matmul_precision() != "highest" \
        else 1e-5
    assert relative_error(out, ref_out) < tol
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert relative_error(grad, ref_grad) < tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_and_empty_batch(backend):
    table, indices, offsets, weights = random_inputs(6, [3, 4, 2], 2, 5)
    table_nc = table.transpose(1, 2).contiguous().transpose(1, 2)
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    assert not table_nc.is_contiguous() and not weights_nc.is_contiguous()
    out, grads = pooled_and_grads(_kernel(backend), table_nc, indices.t().contiguous().t(),
                                  offsets, weights_nc)
    ref_out, ref_grads = pooled_and_grads(reference.pooled_lookup, table, indices, offsets, weights)
    torch.testing.assert_close(out, ref_out)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad)

    table, indices, offsets, weights = random_inputs(0, [3, 2], 2, 4)
    for w in (None, weights):
        assert ops.pooled_lookup(table, indices, offsets, w, backend=backend).shape == (0, 2, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_indices_never_read_outside_the_table(backend):
    table, indices, offsets, weights = random_inputs(5, [3, 4], 2, 3)
    wild = indices.clone()
    wild[1, 0], wild[3, 1] = -10**6, 10**9
    try:
        ops.set_bounds_check("off")
        for w in (None, weights):
            out = ops.pooled_lookup(table, wild, offsets, w, backend=backend)
            assert torch.isfinite(out).all()
    finally:
        ops.set_bounds_check("error")
    with pytest.raises(IndexError, match="out of range"):
        ops.pooled_lookup(table, wild, offsets, backend=backend)


def test_mismatched_dtypes_are_rejected():
    table, indices, offsets, weights = random_inputs(3, [2, 2], 1, 4)
    with pytest.raises(TypeError, match="field_weights must have the dtype of the table"):
        ops.pooled_lookup(table, indices, offsets, weights.float())


def test_triton_op_registration():
    if "triton" not in BACKENDS:
        pytest.skip("the triton backend cannot run here")
    from fastme.ops.triton import OPS

    table, indices, offsets, weights = random_inputs(5, [3, 2, 2], 2, 3)
    table.requires_grad_()
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(OPS.fm, (table, indices, offsets), test_utils=checks)
    torch.library.opcheck(OPS.fwfm, (table, indices, offsets, weights.requires_grad_()),
                          test_utils=checks)


@criteo_shapes_on_gpu
def test_criteo_shapes_on_gpu(backend, dtype, num_sets):
    """NFwFM at Criteo size: B=4096, N=39, K=50, realistic cardinalities with hot rows."""
    field_dims = criteo_like_field_dims()
    table, indices, offsets, weights = random_inputs(4096, field_dims, num_sets, 50, dtype=dtype)
    for w in (None, weights):
        out, grads = pooled_and_grads(_kernel(backend), table, indices, offsets, w)
        ref_out, ref_grads = pooled_and_grads(reference.pooled_lookup, table.double(), indices,
                                              offsets, None if w is None else w.double())
        tol = 2e-2 if dtype == torch.bfloat16 else 5e-3  # float32 may use TF32
        assert relative_error(out, ref_out) < tol
        for grad, ref_grad in zip(grads, ref_grads, strict=True):
            assert relative_error(grad, ref_grad) < tol
