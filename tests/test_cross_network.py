"""The kernel backends of cross_network and lookup_cross_network (the per-set DCNv2 cross network,
alone and with the lookup fused in front) against the eager reference: forward and the gradients
of x0 / table, weight and bias, float64 and low precision, exact float32 and TF32."""

import pytest
import torch

import fastme.ops as ops
from fastme.ops import reference

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
    cross_params,
    gpu_test,
    lookup_inputs,
    outputs_and_grads,
    use_cpu_isa,
)
from kernel_backends import with_backend as kernel

pytestmark = KERNEL_TESTS


def random_inputs(
    batch,
    field_dims,
    num_sets,
    dim,
    layers,
    *,
    dtype=torch.float64,
    index_dtype=torch.int64,
    device=DEVICE,
):
    """(table, indices, offsets, x0, weight, bias) with D = N * K."""
    table, indices, offsets = lookup_inputs(
        batch, field_dims, num_sets, dim, dtype=dtype, index_dtype=index_dtype, device=device
    )
    x0, weight, bias = cross_params(
        batch, num_sets, len(field_dims) * dim, layers, dtype=dtype, device=device
    )
    return table, indices, offsets, x0, weight, bias


SHAPES = [  # batch, field_dims, num_sets, dim, layers
    (1, [1], 1, 1, 1),  # B = N = M = K = L = 1 (D = 1)
    (5, [3, 1, 2], 2, 3, 3),  # odd D = 9, three layers
    (6, [2, 2], 1, 5, 2),  # M = 1, odd K
    (17, [2, 3, 2, 2, 3], 1, 7, 2),  # D = 35, B = 17: several row and column blocks
]
GPU_CROSS_SHAPES = [  # batch, sets, dim, layers
    (1, 1, 1, 1),
    (7, 2, 6, 2),
    (70, 3, 65, 3),  # several row and column tiles, ragged edges
    (130, 1, 130, 4),
    (600, 2, 24, 2),  # the weight gradient is split over the batch
    (5, 2, 10, 0),  # no layers: identity
]
GPU_LOOKUP_CROSS_SHAPES = [  # batch, field_dims, sets, dim, layers
    (1, [1], 1, 1, 1),
    (9, [4, 1, 6], 2, 5, 3),
    (90, [3, 8, 2, 5], 3, 10, 4),
    (40, [2, 2], 1, 16, 2),
]
# Relative error against float64 maths on the same values, per layer.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 4e-2, torch.float16: 6e-3}
TF32_TOL = 5e-3


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_reference_float64(backend, op, shape):
    public, ref, pick = OPS[op]
    _, grads = assert_close_to_reference(
        kernel(public, backend), ref, pick(random_inputs(*shape)), rtol=1e-11, atol=1e-11
    )
    assert len(grads) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_indices_and_gradcheck(backend):
    inputs = random_inputs(3, [2, 1], 1, 2, 2, index_dtype=torch.int32)
    table, indices, offsets, weight, bias = lookup_cross_args(inputs)
    params = [t.requires_grad_() for t in (table, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda t, w, b: ops.lookup_cross_network(t, indices, offsets, w, b, backend=backend),
        params,
        fast_mode=True,
        nondet_tol=NONDET_TOL,
    )
    x0 = inputs[3].requires_grad_()
    assert torch.autograd.gradcheck(
        kernel(ops.cross_network, backend),
        [x0, weight, bias],
        fast_mode=True,
        nondet_tol=NONDET_TOL,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision(backend, dtype, matmul_precision):
    """float32 / bfloat16 inputs against float64 maths on the same rounded values; float32 exact
    IEEE under torch's default matmul precision ("highest")."""
    matmul_precision("highest")
    inputs = random_inputs(10, [2, 3, 2], 2, 4, 3, dtype=dtype)
    for public, ref, pick in OPS.values():
        assert_matches_reference(
            kernel(public, backend), ref, pick(inputs), 2e-2 if dtype == torch.bfloat16 else 1e-5
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_tf32_follows_torch_matmul_precision(backend, matmul_precision):
    """With torch.set_float32_matmul_precision("high") float32 products may use TF32; the result
    stays within TF32 accuracy."""
    matmul_precision("high")
    inputs = random_inputs(8, [2, 3], 1, 4, 2, dtype=torch.float32)
    assert_matches_reference(
        kernel(ops.cross_network, backend), reference.cross_network, cross_args(inputs), TF32_TOL
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_without_gradient_matches_the_training_forward(backend):
    """Without autograd recording a backend may keep fewer activations: same result."""
    x0, weight, bias = cross_params(9, 2, 10, 3)
    with torch.no_grad():
        fast = ops.cross_network(x0, weight, bias, backend=backend)
    trained = ops.cross_network(x0, weight.requires_grad_(), bias, backend=backend)
    assert torch.equal(fast, trained.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    # zero layers: the identity (and x0 / the lookup itself)
    inputs = random_inputs(4, [2, 3], 2, 3, 0)
    for public, ref, pick in OPS.values():
        torch.testing.assert_close(public(*pick(inputs), backend=backend), ref(*pick(inputs)))
    # empty batch, forward and backward
    inputs = random_inputs(0, [2, 3], 2, 3, 2)
    for public, _, pick in OPS.values():
        args = [a.detach().requires_grad_() if a.is_floating_point() else a for a in pick(inputs)]
        out = public(*args, backend=backend)
        assert out.shape == (0, 2, 6)
        out.sum().backward()
        assert all(not a.grad.any() for a in args if a.is_floating_point())
    # non-contiguous x0, weight and indices
    inputs = random_inputs(5, [2, 3], 2, 3, 2)
    table, indices, offsets, x0, weight, bias = inputs
    x0_nc = x0.transpose(0, 1).contiguous().transpose(0, 1)
    weight_nc = weight.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x0_nc.is_contiguous() and not weight_nc.is_contiguous()
    assert_close_to_reference(
        kernel(ops.cross_network, backend),
        reference.cross_network,
        (x0_nc, weight_nc, bias),
        (x0, weight, bias),
    )
    out = ops.lookup_cross_network(
        table, indices.t().contiguous().t(), offsets, weight_nc, bias, backend=backend
    )
    torch.testing.assert_close(
        out, reference.lookup_cross_network(table, indices, offsets, weight, bias)
    )


def test_mismatched_dtypes_are_rejected():
    table, indices, offsets, x0, weight, bias = random_inputs(3, [2, 2], 1, 2, 1)
    with pytest.raises(TypeError, match="weight must have the dtype of the x0"):
        ops.cross_network(x0, weight.float(), bias)
    with pytest.raises(TypeError, match="bias must have the dtype of the table"):
        ops.lookup_cross_network(table, indices, offsets, weight, bias.float())


@pytest.mark.parametrize("backend", ["triton", "cuda", "cpu"])
def test_op_registration(backend):
    table, indices, offsets, x0, weight, bias = random_inputs(4, [2, 3], 2, 2, 2)
    for t in (table, x0, weight, bias):
        t.requires_grad_()
    out = reference.cross_network(x0, weight, bias).detach()
    # AOT dispatch is exercised by test_torch_compile_fullgraph
    check_registration(backend, "cross_network", (x0, weight, bias, True), [out])
    check_registration(
        backend, "lookup_cross_network", (table, indices, offsets, weight, bias, True), [out, x0]
    )


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

    assert_close_to_reference(
        torch.compile(loss, fullgraph=True, backend=compiler), loss, (table, weight, bias)
    )


# ---- the CPU kernels --------------------------------------------------------------------------

_needs_cpu_kernels = pytest.mark.skipif(not cpu_isas(), reason="no compiled CPU kernels here")
CPU_CROSS_SHAPES = [  # batch, sets, dim, layers
    (1, 1, 1, 1),
    (7, 2, 9, 3),  # D shorter than a vector
    (130, 3, 37, 2),  # a vector and a tail (every ISA), several ranges of the bias gradient
    (66, 1, 64, 4),  # whole vectors only, one set (SE)
]


@_needs_cpu_kernels
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch,sets,dim,layers", CPU_CROSS_SHAPES)
def test_cpu_kernels_match_reference_on_every_isa(isa, dtype, batch, sets, dim, layers):
    """Each ISA's passes (full vectors, tails, 16-bit conversions) against float64 maths on the
    same values: output and the gradients of x0, weight and bias."""
    with use_cpu_isa(isa):
        assert_matches_reference(
            kernel(ops.cross_network, "cpu"),
            reference.cross_network,
            cross_params(batch, sets, dim, layers, dtype=dtype, device="cpu"),
            TOL[dtype] * max(layers, 1),
        )


@_needs_cpu_kernels
@pytest.mark.parametrize("threads", [3, 8])
def test_cpu_bias_gradient_is_the_same_for_every_thread_count(threads):
    """The bias gradient is summed per fixed range of samples, then over the ranges in order: the
    bits of one thread for any team size (one layer: nothing of torch's GEMMs feeds it)."""
    x0, weight, bias = cross_params(5000, 2, 21, 1, dtype=torch.float32, device="cpu")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_grads(kernel(ops.cross_network, "cpu"), x0, weight, bias)[1][2]
        torch.set_num_threads(threads)
        many = outputs_and_grads(kernel(ops.cross_network, "cpu"), x0, weight, bias)[1][2]
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, many)


@_needs_cpu_kernels
def test_cpu_states_get_no_zero_filled_gradient():
    """Only x_L's gradient reaches the backward: no zero-filled gradient of the states (a
    (2L-1) x [B, M, D] tensor per step) is made."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if torch.is_tensor(t):
                    self.made.append(tuple(t.shape))
            return out

    x0, weight, bias = cross_params(4, 2, 3, 2, device="cpu")
    weight.requires_grad_()
    out, states = torch.ops.fastme.cpu_cross_network(x0, weight, bias, True)
    assert states.shape == (3, 4, 2, 3)
    with Shapes():
        (grad,) = torch.autograd.grad(out.sum(), weight)
    assert tuple(states.shape) not in Shapes.made
    ref = torch.autograd.grad(reference.cross_network(x0, weight, bias).sum(), weight)[0]
    torch.testing.assert_close(grad, ref)


# ---- GPU only -----------------------------------------------------------------------------------


@gpu_test
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,sets,dim,layers", GPU_CROSS_SHAPES)
def test_cross_network_every_dtype_on_gpu(
    backend, batch, sets, dim, layers, dtype, matmul_precision
):
    matmul_precision("highest")
    assert_matches_reference(
        kernel(ops.cross_network, backend),
        reference.cross_network,
        cross_params(batch, sets, dim, layers, dtype=dtype),
        TOL[dtype] * max(layers, 1),
    )


@gpu_test
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,sets,dim,layers", GPU_CROSS_SHAPES[:5])
def test_cross_network_tf32_on_gpu(backend, batch, sets, dim, layers, matmul_precision):
    matmul_precision("high")
    assert_matches_reference(
        kernel(ops.cross_network, backend),
        reference.cross_network,
        cross_params(batch, sets, dim, layers, dtype=torch.float32),
        TF32_TOL * layers,
    )


@gpu_test
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,field_dims,sets,dim,layers", GPU_LOOKUP_CROSS_SHAPES)
def test_lookup_cross_network_every_gradient_path_on_gpu(
    backend, batch, field_dims, sets, dim, layers, dtype, grad_mode, matmul_precision
):
    matmul_precision("highest")
    inputs = random_inputs(batch, field_dims, sets, dim, layers, dtype=dtype)
    assert_matches_reference(
        kernel(ops.lookup_cross_network, backend),
        reference.lookup_cross_network,
        lookup_cross_args(inputs),
        TOL[dtype] * layers,
    )


@criteo_shapes_on_gpu
def test_criteo_shapes_on_gpu(backend, dtype, num_sets):
    """ME-DCNv2 at Criteo size: B=4096, N=39, K=10 (D=390), L=4, realistic cardinalities."""
    inputs = random_inputs(4096, criteo_like_field_dims(), num_sets, 10, 4, dtype=dtype)
    for public, ref, pick in OPS.values():
        assert_matches_reference(
            kernel(public, backend), ref, pick(inputs), 3e-2 if dtype == torch.bfloat16 else 1e-4
        )


@gpu_test
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_device(backend):
    """The kernels follow the tensors, not the current device."""
    x0, weight, bias = cross_params(9, 2, 7, 2, device="cuda:1")
    with torch.cuda.device(0):
        out, grads = assert_close_to_reference(
            kernel(ops.cross_network, backend), reference.cross_network, (x0, weight, bias)
        )
    assert out.device == grads[0].device == torch.device("cuda:1")


@_needs_cpu_kernels
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_cpu_inference_forward_in_chunks_of_samples_matches_the_reference(
    layers, dtype, monkeypatch
):
    """Without saved states the CPU forward runs the batch in chunks of samples (scratch buffers
    of at most ``_SCRATCH_BYTES`` each; here tiny: 7 chunks, the last one short), through the
    fused lookup too: the reference's values, and the unchunked forward's."""
    from fastme.ops.cpu import cross

    table, indices, offsets, _, weight, bias = random_inputs(
        50, [3, 4, 2], 2, 3, layers, dtype=dtype, device="cpu"
    )
    x0 = reference.multi_embedding_lookup(table, indices, offsets).reshape(50, 2, 9)
    whole = torch.ops.fastme.cpu_cross_network(x0, weight, bias, False)[0]
    monkeypatch.setattr(cross, "_SCRATCH_BYTES", 2 * 8 * 9 * x0.element_size())
    with torch.no_grad():
        chunked = ops.cross_network(x0, weight, bias, backend="cpu")
        fused = ops.lookup_cross_network(table, indices, offsets, weight, bias, backend="cpu")
        expect = reference.cross_network(x0.double(), weight.double(), bias.double())
    tol = TOL[dtype] * layers
    torch.testing.assert_close(chunked.double(), expect, rtol=tol, atol=tol)
    torch.testing.assert_close(chunked, whole, rtol=tol, atol=tol)
    assert torch.equal(fused, chunked)
