"""The eval per-set projection's epilogue (fastme.ops.set_projection_mean): the CPU backend's
fused pass (bias, ReLU, mean over sets after bias-free GEMMs) against the reference composition,
every ISA and thread count, and the models' use of it in inference only."""

import pytest
import torch

import fastme.models as fm
import fastme.ops as ops
from fastme.ops import reference

from kernel_backends import OpCalls, cpu_isas, use_cpu_isa

needs_cpu_kernels = pytest.mark.skipif(not cpu_isas(), reason="no compiled CPU kernels here")
FIELD_DIMS = [7, 3, 11, 5]


def _inputs(batch, sets, width, out, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sets, width, generator=g, dtype=torch.float64)
    weight = torch.randn(sets, out, width, generator=g, dtype=torch.float64) / width**0.5
    bias = torch.randn(sets, out, generator=g, dtype=torch.float64)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


def _relu_mean_in_order(z, bias):
    """The kernel's arithmetic in torch: each set's relu(z + b) in the accumulation type, summed
    in set order, divided by M, rounded once."""
    acc = torch.float64 if z[0].dtype == torch.float64 else torch.float32
    total = torch.relu(z[0].to(acc) + bias[0].to(acc))
    for m in range(1, len(z)):
        total = total + torch.relu(z[m].to(acc) + bias[m].to(acc))
    return (total / len(z)).to(z[0].dtype)


@needs_cpu_kernels
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("batch,sets,out", [(37, 3, 13), (5, 1, 40), (64, 4, 33)])
def test_cpu_pass_matches_its_arithmetic_bit_for_bit(isa, dtype, threads, batch, sets, out):
    """Full vectors and tails of every ISA, every dtype: the same bits as the float32 (float64)
    sum in set order of relu(z + b), rounded once; negative and positive pre-activations."""
    g = torch.Generator().manual_seed(batch + sets + out)
    z = [torch.randn(batch, out, generator=g).to(dtype) for _ in range(sets)]
    bias = torch.randn(sets, out, generator=g, dtype=torch.float64)
    pre = torch.stack([t.double() for t in z]) + bias.unsqueeze(1)
    assert (pre > 0).any() and (pre < 0).any()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with use_cpu_isa(isa):
            got = torch.ops.fastme.cpu_set_relu_mean(z, bias)
    finally:
        torch.set_num_threads(previous)
    assert got.dtype == dtype and got.shape == (batch, out)
    expected = _relu_mean_in_order(
        z, bias.to(torch.float64 if dtype == torch.float64 else torch.float32)
    )
    assert torch.equal(got, expected)


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_op_matches_reference_composition(dtype):
    """The public op on the CPU backend (bias-free GEMMs, then the pass) against the reference's
    addmm + ReLU + float32 mean, odd sizes."""
    x, weight, bias = _inputs(37, 3, 20, 13, dtype)
    with torch.inference_mode():
        got = ops.set_projection_mean(x, weight, bias, backend="cpu")
        expected = reference.set_projection_mean(x.double(), weight.double(), bias.double())
    assert got.dtype == dtype and got.shape == (37, 13)
    assert (expected == 0).any() and (expected > 0).any()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)


@needs_cpu_kernels
def test_op_with_gradients_runs_the_reference():
    """The pass has no backward: with gradients wanted the CPU backend runs the reference."""
    x, weight, bias = _inputs(9, 2, 6, 5, torch.float64)
    weight.requires_grad_()
    with OpCalls("cpu_set_relu_mean") as calls:
        out = ops.set_projection_mean(x, weight, bias, backend="cpu")
    assert calls.count == 0
    (grad,) = torch.autograd.grad(out.sum(), weight)
    w = weight.detach().requires_grad_()
    (expected,) = torch.autograd.grad(reference.set_projection_mean(x, w, bias).sum(), w)
    assert torch.equal(grad, expected)


def test_op_validates_its_arguments():
    x, weight, bias = _inputs(4, 2, 6, 5, torch.float32)
    with pytest.raises(ValueError, match="weight"):
        ops.set_projection_mean(x, weight[:1], bias)
    with pytest.raises(ValueError, match="bias"):
        ops.set_projection_mean(x, weight, bias[:, :3])


def _dcnv2(backend):
    torch.manual_seed(0)
    model = fm.build("dcnv2", FIELD_DIMS, 3, multi=True, hidden_dim=24, backend=backend)
    with torch.no_grad():  # running statistics of a trained BatchNorm, not 0 / 1
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _indices(batch=37):
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randint(0, d, (batch,), generator=g) for d in FIELD_DIMS], 1)


@needs_cpu_kernels
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_model_inference_uses_the_pass_on_the_cpu_backend(precision):
    """ME-DCNv2 in eval + inference_mode: the cpu backend calls the pass once per forward and
    agrees with the reference backend, which does not call it."""
    x = _indices()
    outputs = {}
    for backend in ("cpu", "reference"):
        model = _dcnv2(backend)
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
            OpCalls("cpu_set_relu_mean") as calls,
        ):
            outputs[backend] = model(x).float()
        assert calls.count == (1 if backend == "cpu" else 0)
    tol = 1e-5 if precision == "fp32" else 5e-2
    torch.testing.assert_close(outputs["cpu"], outputs["reference"], atol=tol, rtol=tol)


@needs_cpu_kernels
def test_model_eval_with_gradients_and_training_do_not_use_the_pass():
    model = _dcnv2("cpu")
    x = _indices()
    with OpCalls("cpu_set_relu_mean") as calls:
        model(x).sum().backward()  # eval, gradients recorded
        model.train()
        model(x).sum().backward()
    assert calls.count == 0


@needs_cpu_kernels
def test_model_inference_under_torch_compile_fullgraph():
    """The pass is a custom op with a fake: the eval model compiles without a graph break."""
    model = _dcnv2("cpu")
    x = _indices()
    with torch.inference_mode():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
