"""The kernel backends of multi_embedding_lookup against the eager reference.

Runs every kernel backend available here: "triton" through Triton's CPU interpreter without a GPU
(TRITON_INTERPRET=1, set in conftest.py), plus "cuda" on a GPU machine. float64 forward and table
gradient match the reference to rounding; 16-bit tables are checked against float64 maths.
"""

import pytest
import torch

import fastme.ops as ops
from fastme.ops import reference

from kernel_backends import (BACKENDS, DEVICE, NONDET_TOL, criteo_like_field_dims,
                             criteo_shapes_on_gpu, requires_kernel_backend)

pytestmark = requires_kernel_backend


def random_inputs(batch, field_dims, num_sets, dim, *, dtype=torch.float64,
                  index_dtype=torch.int64, seed=0):
    """Table, indices (few values per field: heavy duplication; row 0 of the batch takes every
    field's largest index) and offsets."""
    g = torch.Generator().manual_seed(seed)
    dims = torch.tensor(field_dims)
    table = torch.randn(int(dims.sum()), num_sets, dim, generator=g, dtype=torch.float64)
    indices = torch.stack([torch.randint(0, d, (batch,), generator=g) for d in field_dims], 1)
    if batch:
        indices[0] = dims - 1
    offsets = torch.cumsum(dims, 0) - dims
    return (table.to(DEVICE, dtype), indices.to(DEVICE, index_dtype),
            offsets.to(DEVICE, index_dtype))


SHAPES = [  # batch, field_dims, num_sets, dim
    (1, [1], 1, 1),            # B = N = M = K = 1
    (7, [3, 1, 5], 2, 5),      # odd K, a field with one value
    (12, [2, 2, 2, 2], 3, 10), # heavy duplication, Criteo's K
    (5, [6, 4], 1, 16),        # M = 1
    (80, [2, 2, 2, 2], 1, 3),  # several blocks of (sample, field) pairs
    (3, [3, 2, 2], 2, 50),     # K = 50 (NFwFM's base size)
]


def lookup_and_grads(fn, table, indices, offsets, grad_seed=1):
    table = table.detach().requires_grad_()
    out = fn(table, indices, offsets)
    g = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    (grad,) = torch.autograd.grad(out, table, grad_out) if out.numel() else (None,)
    return out.detach(), grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_table_gradient_match_reference_float64(backend, shape, index_dtype):
    inputs = random_inputs(*shape, index_dtype=index_dtype)
    out, grad = lookup_and_grads(
        lambda *a: ops.multi_embedding_lookup(*a, backend=backend), *inputs)
    ref_out, ref_grad = lookup_and_grads(reference.multi_embedding_lookup, *inputs)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)  # a gather is exact
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    table, indices, offsets = random_inputs(4, [3, 2, 2], 2, 3)
    table.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: ops.multi_embedding_lookup(t, indices, offsets, backend=backend), (table,),
        fast_mode=True, nondet_tol=NONDET_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_tables(backend, dtype):
    table, indices, offsets = random_inputs(9, [2, 3, 2], 3, 7, dtype=dtype)
    out, grad = lookup_and_grads(
        lambda *a: ops.multi_embedding_lookup(*a, backend=backend), table, indices, offsets)
    assert out.dtype == grad.dtype == dtype
    ref_out, ref_grad = lookup_and_grads(reference.multi_embedding_lookup, table.double(),
                                         indices, offsets)
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=0)
    # duplicates are summed in float32 and rounded once: within one 16-bit ulp of the exact sum
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_mode_gives_the_same_gradient(backend, monkeypatch):
    inputs = random_inputs(12, [2, 3], 2, 5, dtype=torch.float32)
    _, grad = lookup_and_grads(lambda *a: ops.multi_embedding_lookup(*a, backend=backend), *inputs)
    monkeypatch.setenv("FASTME_DETERMINISTIC", "1")
    _, grad_det = lookup_and_grads(
        lambda *a: ops.multi_embedding_lookup(*a, backend=backend), *inputs)
    torch.testing.assert_close(grad_det, grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    table, indices, offsets = random_inputs(6, [3, 4, 2], 2, 5)
    table_nc = table.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    indices_nc = indices.t().contiguous().t()
    assert not table_nc.is_contiguous() and not indices_nc.is_contiguous()
    out, grad = lookup_and_grads(
        lambda *a: ops.multi_embedding_lookup(*a, backend=backend), table_nc, indices_nc, offsets)
    ref_out, ref_grad = lookup_and_grads(reference.multi_embedding_lookup, table, indices, offsets)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    table, indices, offsets = random_inputs(0, [3, 2], 2, 4)
    table.requires_grad_()
    out = ops.multi_embedding_lookup(table, indices, offsets, backend=backend)
    assert out.shape == (0, 2, 2, 4)
    out.sum().backward()
    assert table.grad.shape == table.shape and not table.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounds_check_modes(backend):
    table, indices, offsets = random_inputs(4, [3, 5], 2, 3)
    bad = indices.clone()
    bad[1, 1] = 5
    with pytest.raises(IndexError, match=r"indices\[1, 1\] = 5 is out of range for field 1"):
        ops.multi_embedding_lookup(table, bad, offsets, backend=backend)
    try:
        ops.set_bounds_check("clamp")
        with pytest.warns(RuntimeWarning, match="clamped"):
            out = ops.multi_embedding_lookup(table, bad, offsets, backend=backend)
        torch.testing.assert_close(out[1, :, 1], table[offsets[1] + 4])
        # "off": no check at all, but the kernels clamp the global row, so even wild indices
        # read inside the table (never an illegal access)
        ops.set_bounds_check("off")
        wild = indices.clone()
        wild[0, 0], wild[2, 1] = -10**6, 10**9
        out = ops.multi_embedding_lookup(table, wild, offsets, backend=backend)
        torch.testing.assert_close(out[0, :, 0], table[0])
        torch.testing.assert_close(out[2, :, 1], table[-1])
    finally:
        ops.set_bounds_check("error")


def test_triton_op_registration():
    """Schema, fake (meta) implementation and autograd registration of the custom ops."""
    if "triton" not in BACKENDS:
        pytest.skip("the triton backend cannot run here")
    from fastme.ops.triton import lookup

    table, indices, offsets = random_inputs(5, [3, 2, 2], 2, 3)
    grad = torch.randn(5, 2, 3, 3, dtype=torch.float64, device=DEVICE)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(lookup.lookup_op, (table.requires_grad_(), indices, offsets),
                          test_utils=checks)
    torch.library.opcheck(lookup.lookup_backward_op, (grad, indices, offsets, table.shape[0]),
                          test_utils=checks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """The public op traces into one graph (validation, bounds check and the custom op), forward
    and backward, and gives the eager result."""
    table, indices, offsets = random_inputs(6, [3, 4], 2, 3)

    def loss(t):
        return (ops.multi_embedding_lookup(t, indices, offsets, backend=backend) ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    t1 = table.clone().requires_grad_()
    t2 = table.clone().requires_grad_()
    compiled(t1).backward()
    loss(t2).backward()
    torch.testing.assert_close(t1.grad, t2.grad)
    if DEVICE == "cuda":
        return  # a failing device-side assertion would poison the CUDA context of later tests
    # bounds check "error" inside the graph: an asynchronous assertion instead of a graph break
    with pytest.raises(RuntimeError, match="out of range"):
        bad = indices.clone()
        bad[0, 0] = 3
        torch.compile(lambda t: ops.multi_embedding_lookup(t, bad, offsets, backend=backend),
                      fullgraph=True, backend="aot_eager")(table)


@criteo_shapes_on_gpu
def test_criteo_shapes_on_gpu(backend, dtype, num_sets):
    """B=4096, N=39, K=10, realistic cardinalities (hot rows in the small fields)."""
    field_dims = criteo_like_field_dims()
    table, indices, offsets = random_inputs(4096, field_dims, num_sets, 10, dtype=dtype)
    out, grad = lookup_and_grads(
        lambda *a: ops.multi_embedding_lookup(*a, backend=backend), table, indices, offsets)
    ref_out, ref_grad = lookup_and_grads(reference.multi_embedding_lookup, table.double(),
                                         indices, offsets)
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert float((grad.double() - ref_grad).norm() / ref_grad.norm()) < tol
