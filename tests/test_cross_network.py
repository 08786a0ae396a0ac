"""The kernel backends of cross_network and lookup_cross_network (the per-set DCNv2 cross network,
alone and with the lookup fused in front) against the eager reference: forward and the gradients
of x0 / table, weight and bias, float64 and low precision."""

import pytest
import torch

import fastme.ops as ops
from fastme.ops import reference

from kernel_backends import (BACKENDS, DEVICE, NONDET_TOL, criteo_like_field_dims,
                             criteo_shapes_on_gpu, KERNEL_TESTS)

pytestmark = KERNEL_TESTS


def random_inputs(batch, field_dims, num_sets, dim, layers, *, dtype=torch.float64,
                  index_dtype=torch.int64, seed=0):
    """(table, indices, offsets, x0, weight, bias). Weights scaled like DCNv2's Xavier init so
    that x_L stays O(1); indices heavily duplicated, row 0 takes every field's largest index."""
    g = torch.Generator().manual_seed(seed)
    dims = torch.tensor(field_dims)
    d = len(field_dims) * dim
    table = torch.randn(int(dims.sum()), num_sets, dim, generator=g, dtype=torch.float64)
    x0 = torch.randn(batch, num_sets, d, generator=g, dtype=torch.float64)
    weight = torch.randn(layers, num_sets, d, d, generator=g, dtype=torch.float64) / d ** 0.5
    bias = torch.randn(layers, num_sets, d, generator=g, dtype=torch.float64)
    indices = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in field_dims], 1)
    if batch:
        indices[0] = dims - 1
    offsets = torch.cumsum(dims, 0) - dims
    return (table.to(DEVICE, dtype), indices.to(DEVICE, index_dtype),
            offsets.to(DEVICE, index_dtype), x0.to(DEVICE, dtype), weight.to(DEVICE, dtype),
            bias.to(DEVICE, dtype))


SHAPES = [  # batch, field_dims, num_sets, dim, layers
    (1, [1], 1, 1, 1),           # B = N = M = K = L = 1 (D = 1)
    (5, [3, 1, 2], 2, 3, 3),     # odd D = 9, three layers
    (6, [2, 2], 1, 5, 2),        # M = 1, odd K
    (17, [2, 3, 2, 2, 3], 1, 7, 2),  # D = 35, B = 17: several row and column blocks
]


def run(fn, args, grad_seed=1):
    """Output and the gradients of every floating-point argument, for a random grad_out."""
    args = [a.detach().requires_grad_() if a.is_floating_point() else a for a in args]
    out = fn(*args)
    g = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    leaves = [a for a in args if a.is_floating_point()]
    grads = torch.autograd.grad(out, leaves, grad_out) if out.numel() else ()
    return out.detach(), grads


def cross_args(inputs):
    _, _, _, x0, weight, bias = inputs
    return x0, weight, bias


def lookup_cross_args(inputs):
    table, indices, offsets, _, weight, bias = inputs
    return table, indices, offsets, weight, bias


OPS = {  # name: (public op, reference, argument picker)
    "cross": (ops.cross_network, reference.cross_network, cross_args),
    "lookup_cross": (ops.lookup_cross_network, reference.lookup_cross_network, lookup_cross_args),
}


def relative_error(a, b):
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_reference_float64(backend, op, shape):
    public, ref, pick = OPS[op]
    args = pick(random_inputs(*shape))
    out, grads = run(lambda *a: public(*a, backend=backend), args)
    ref_out, ref_grads = run(ref, args)
    torch.testing.assert_close(out, ref_out, rtol=1e-11, atol=1e-11)
    assert len(grads) == len(ref_grads) == 3
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_indices_and_gradcheck(backend):
    inputs = random_inputs(3, [2, 1], 1, 2, 2, index_dtype=torch.int32)
    table, indices, offsets, weight, bias = lookup_cross_args(inputs)
    params = [t.requires_grad_() for t in (table, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda t, w, b: ops.lookup_cross_network(t, indices, offsets, w, b, backend=backend),
        params, fast_mode=True, nondet_tol=NONDET_TOL)
    x0 = inputs[3].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: ops.cross_network(x, w, b, backend=backend), [x0, weight, bias],
        fast_mode=True, nondet_tol=NONDET_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision(backend, dtype):
    """float32 / bfloat16 inputs against float64 maths on the same rounded values. float32 is
    exact IEEE under torch's default matmul precision ("highest")."""
    inputs = random_inputs(10, [2, 3, 2], 2, 4, 3, dtype=dtype)
    for op, (public, ref, pick) in OPS.items():
        args = pick(inputs)
        out, grads = run(lambda *a: public(*a, backend=backend), args)
        assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
        ref_out, ref_grads = run(ref, [a.double() if a.is_floating_point() else a for a in args])
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        assert relative_error(out, ref_out) < tol, op
        for grad, ref_grad in zip(grads, ref_grads, strict=True):
            assert relative_error(grad, ref_grad) < tol, op


@pytest.mark.parametrize("backend", BACKENDS)
def test_tf32_follows_torch_matmul_precision(backend):
    """With torch.set_float32_matmul_precision("high") float32 products may use TF32; the result
    stays within TF32 accuracy."""
    inputs = random_inputs(8, [2, 3], 1, 4, 2, dtype=torch.float32)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        out, grads = run(lambda *a: ops.cross_network(*a, backend=backend), cross_args(inputs))
    finally:
        torch.set_float32_matmul_precision(previous)
    ref_out, ref_grads = run(reference.cross_network,
                             [a.double() for a in cross_args(inputs)])
    assert relative_error(out, ref_out) < 5e-3
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert relative_error(grad, ref_grad) < 5e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    # zero layers: the identity (and x0 / the lookup itself)
    inputs = random_inputs(4, [2, 3], 2, 3, 0)
    for public, ref, pick in OPS.values():
        torch.testing.assert_close(public(*pick(inputs), backend=backend), ref(*pick(inputs)))
    # empty batch
    inputs = random_inputs(0, [2, 3], 2, 3, 2)
    for public, _, pick in OPS.values():
        assert public(*pick(inputs), backend=backend).shape == (0, 2, 6)
    # non-contiguous x0, weight and indices
    inputs = random_inputs(5, [2, 3], 2, 3, 2)
    table, indices, offsets, x0, weight, bias = inputs
    x0_nc = x0.transpose(0, 1).contiguous().transpose(0, 1)
    weight_nc = weight.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x0_nc.is_contiguous() and not weight_nc.is_contiguous()
    out, grads = run(lambda *a: ops.cross_network(*a, backend=backend), (x0_nc, weight_nc, bias))
    ref_out, ref_grads = run(reference.cross_network, (x0, weight, bias))
    torch.testing.assert_close(out, ref_out)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad)
    out = ops.lookup_cross_network(table, indices.t().contiguous().t(), offsets, weight_nc, bias,
                                   backend=backend)
    torch.testing.assert_close(out, reference.lookup_cross_network(table, indices, offsets,
                                                                   weight, bias))


def test_mismatched_dtypes_are_rejected():
    table, indices, offsets, x0, weight, bias = random_inputs(3, [2, 2], 1, 2, 1)
    with pytest.raises(TypeError, match="weight must have the dtype of the x0"):
        ops.cross_network(x0, weight.float(), bias)
    with pytest.raises(TypeError, match="bias must have the dtype of the table"):
        ops.lookup_cross_network(table, indices, offsets, weight, bias.float())


def test_triton_op_registration():
    if "triton" not in BACKENDS:
        pytest.skip("the triton backend cannot run here")
    from fastme.ops.triton import OPS

    table, indices, offsets, x0, weight, bias = random_inputs(4, [2, 3], 2, 2, 2)
    for t in (table, x0, weight, bias):
        t.requires_grad_()
    # AOT dispatch is exercised by test_torch_compile_fullgraph
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(OPS.cross, (x0, weight, bias, True), test_utils=checks)
    torch.library.opcheck(OPS.lookup_cross, (table, indices, offsets, weight, bias, True),
                          test_utils=checks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """lookup_cross_network inside torch.compile(fullgraph=True): no graph break, same loss and
    gradients as eager. On the CPU the graph is traced (dynamo, fake tensors, AOT autograd) with
    the aot_eager backend: inductor's C++ code generation adds ~40 s on a 2-core CI machine and
    tests nothing of ours that aot_eager does not."""
    compiler = "inductor" if DEVICE == "cuda" else "aot_eager"
    table, indices, offsets, weight, bias = lookup_cross_args(random_inputs(6, [2, 3], 2, 3, 2))

    def loss(t, w, b):
        out = ops.lookup_cross_network(t, indices, offsets, w, b, backend=backend)
        return torch.nn.functional.softplus(out).mean()

    compiled = torch.compile(loss, fullgraph=True, backend=compiler)
    eager_args = [a.clone().requires_grad_() for a in (table, weight, bias)]
    compiled_args = [a.clone().requires_grad_() for a in (table, weight, bias)]
    loss(*eager_args).backward()
    compiled(*compiled_args).backward()
    for a, b in zip(compiled_args, eager_args, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@criteo_shapes_on_gpu
def test_criteo_shapes_on_gpu(backend, dtype, num_sets):
    """ME-DCNv2 at Criteo size: B=4096, N=39, K=10 (D=390), L=4, realistic cardinalities."""
    field_dims = criteo_like_field_dims()
    inputs = random_inputs(4096, field_dims, num_sets, 10, 4, dtype=dtype)
    for op, (public, ref, pick) in OPS.items():
        args = pick(inputs)
        out, grads = run(lambda *a: public(*a, backend=backend), args)
        ref_out, ref_grads = run(ref, [a.double() if a.is_floating_point() else a for a in args])
        tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
        assert relative_error(out, ref_out) < tol, op
        for grad, ref_grad in zip(grads, ref_grads, strict=True):
            assert relative_error(grad, ref_grad) < tol, op
