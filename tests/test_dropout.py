"""fastme.ops.dropout: the CPU kernel against the reference (the same counter-based mask in torch
integer ops) bit for bit, every dtype, ISA and thread count; the mask's statistics; gradients
(the same mask on the output gradient); registration, compile, and the models' use of it."""

import math

import pytest
import torch

import fastme.models as fm
import fastme.ops as ops
from fastme.models import layers
from fastme.ops import reference

from kernel_backends import OpCalls, check_registration, cpu_isas, use_cpu_isa

needs_cpu_kernels = pytest.mark.skipif(not cpu_isas(), reason="no compiled CPU kernels here")
SEED = torch.tensor(-0x1234_5678_9ABC_DEF0)


@needs_cpu_kernels
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.93])
def test_cpu_kernel_matches_the_reference_bit_for_bit(isa, dtype, threads, p):
    """Odd sizes (vector tails, chunks split between threads), NaN and inf kept as x * 0 is."""
    g = torch.Generator().manual_seed(int(p * 100) + threads)
    x = torch.randn(37, 3, 301, generator=g, dtype=torch.float64).to(dtype)
    x.view(-1)[::97] = float("nan")
    x.view(-1)[5::89] = float("-inf")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with use_cpu_isa(isa):
            ours = ops.dropout(x, p, seed=SEED, backend="cpu")
    finally:
        torch.set_num_threads(before)
    expected = reference.dropout(x, p, SEED)
    assert ours.dtype == dtype and ours.shape == x.shape
    assert torch.equal(ours.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(ours), torch.nan_to_num(expected))


def test_reference_mask_statistics():
    """Keep rate 1 - p within 5 standard deviations; distinct seeds give unrelated masks; the
    keep decisions of neighbouring elements are uncorrelated."""
    n = 200_003
    x = torch.ones(n, dtype=torch.float64)
    for p in (0.1, 0.5, 0.9):
        kept = reference.dropout(x, p, SEED) != 0
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(kept.sum().item() - n * (1 - p)) < 5 * sigma, p
        kept_other = reference.dropout(x, p, SEED + 1) != 0
        both = (kept & kept_other).sum().item()
        assert abs(both - n * (1 - p) ** 2) < 5 * math.sqrt(n), p
        a, b = kept[:-1].double(), kept[1:].double()
        corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
        assert abs(corr.item()) < 5 / math.sqrt(n), p
    # p = 0 keeps everything unchanged
    assert torch.equal(reference.dropout(x * 3, 0.0, SEED), x * 3)


def test_the_mask_bits_match_a_plain_python_hash():
    """The torch integer emulation of the kernel's 32-bit hash against Python's own integers."""

    def mix32(v):
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)

    seed = int(SEED) & (2**64 - 1)
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    index = torch.tensor([0, 1, 2, 12345, 2**32 - 1, 2**32, 2**40 + 7])
    bits = reference.dropout_bits(SEED, index)
    for i, got in zip(index.tolist(), bits.tolist()):
        want = mix32((mix32((i & 0xFFFFFFFF) ^ k0) + (k1 ^ (i >> 32))) & 0xFFFFFFFF)
        assert got == want, i


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_kernels)])
def test_gradient_is_the_same_mask_on_the_output_gradient(backend):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 41, generator=g, dtype=torch.float64, requires_grad=True)
    out = ops.dropout(x, 0.3, seed=SEED, backend=backend)
    grad = torch.randn(23, 41, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(out, x, grad)
    scale = (out != 0).double() / 0.7
    assert torch.allclose(out, x.detach() * scale, rtol=0, atol=1e-15)
    assert torch.allclose(gx, grad * scale, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(
        lambda t: ops.dropout(t, 0.3, seed=SEED, backend=backend),
        (x[:5, :7].detach().clone().requires_grad_(),),
    )


@needs_cpu_kernels
def test_cpu_op_registration_and_compile():
    x = torch.randn(9, 13, requires_grad=True)
    check_registration("cpu", "dropout", (x, 0.25, SEED), [x])
    compiled = torch.compile(
        lambda t: ops.dropout(t, 0.25, seed=SEED, backend="cpu"), fullgraph=True
    )
    assert torch.equal(compiled(x), ops.dropout(x, 0.25, seed=SEED, backend="cpu"))


def test_seed_from_torch_generator_repeats_under_manual_seed():
    x = torch.ones(1000)
    torch.manual_seed(7)
    a, b = ops.dropout(x, 0.5), ops.dropout(x, 0.5)
    torch.manual_seed(7)
    assert torch.equal(ops.dropout(x, 0.5), a) and not torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"p": 1.0}, "p must be"),
        ({"p": -0.1}, "p must be"),
        ({"p": 0.5, "seed": torch.tensor([1, 2])}, "seed must hold one"),
        ({"p": 0.5, "seed": torch.tensor(1.0)}, "seed"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.dropout(torch.ones(3), **kwargs)
    with pytest.raises(TypeError, match="x"):
        ops.dropout(torch.ones(3, dtype=torch.long), 0.5)


@needs_cpu_kernels
@pytest.mark.parametrize("name", ["dcnv2", "nfwfm", "dnn"])
def test_models_run_the_cpu_dropout_on_their_backend_and_torch_draws_on_the_reference(name):
    """Every Dropout of a model follows the model's backend, set at build or later; eval mode
    and the reference backend never call the op."""
    x = torch.randint(0, 3, (8, 4))
    model = fm.build(name, [3, 5, 4, 6], 2, multi=True, backend="cpu")
    dropouts = [m for m in model.modules() if isinstance(m, layers.Dropout)]
    assert dropouts and {d.backend for d in dropouts} == {"cpu"}
    with OpCalls("cpu_dropout") as calls:
        model(x).sum().backward()
    assert calls.count >= 2 * len(dropouts)  # forward and backward
    model.backend = "reference"
    assert {d.backend for d in dropouts} == {"reference"}
    with OpCalls("cpu_dropout") as calls:
        model(x).sum().backward()
    assert calls.count == 0
    model.backend = "cpu"
    model.eval()
    with OpCalls("cpu_dropout") as calls:
        model(x)
    assert calls.count == 0
