"""Races in the cross network. The Triton kernels pass x_l between the warps of one program
through global memory (store, tl.debug_barrier, .cg load); a missing or ineffective barrier shows
as run-to-run differences of a computation that has no atomics: the forward and the x0, weight
and bias gradients."""

import pytest
import torch
from kernel_backends import BACKENDS, on_gpu
from kernel_backends import relative_error as rel

import fastme.ops as ops
from fastme.ops import reference

pytestmark = on_gpu
DEV = "cuda"
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
dtypes = pytest.mark.parametrize("dtype", list(TOL), ids=["float32", "bfloat16"])
backends = pytest.mark.parametrize("backend", BACKENDS)


@dtypes
@backends
def test_cross_network_bitwise_repeatable_and_matches_float64(backend, dtype, criteo):
    """20 forward + backward passes: bitwise equal; the first matches float64."""
    table, idx, offs = criteo(4096, 10, 10, dtype)
    d = 390
    w = (torch.randn(4, 10, d, d, device=DEV) / d**0.5).to(dtype).requires_grad_()
    b = (torch.randn(4, 10, d, device=DEV) * 0.1).to(dtype).requires_grad_()
    x0 = ops.multi_embedding_lookup(table, idx, offs, backend="reference").reshape(4096, 10, d)
    x0 = x0.detach().requires_grad_()
    gout = torch.randn(4096, 10, d, device=DEV).to(dtype)
    runs = []
    for _ in range(20):
        out = ops.cross_network(x0, w, b, backend=backend)
        gx, gw, gb = torch.autograd.grad(out, (x0, w, b), gout)
        runs.append((out, gx, gw, gb))
    for r in runs[1:]:
        for a, e, what in zip(r, runs[0], ("out", "dx0", "dW", "db")):
            assert torch.equal(a, e), f"{what} differs between runs (race?)"
    ref = reference.cross_network(x0.double(), w.double(), b.double())
    rg = torch.autograd.grad(ref, (x0, w, b), gout.double())
    errs = [rel(runs[0][0], ref)] + [rel(a, e) for a, e in zip(runs[0][1:], rg)]
    print("rel errors out/dx0/dW/db:", ["%.2e" % e for e in errs])
    assert max(errs) < TOL[dtype], errs


@dtypes
@backends
def test_lookup_cross_network_bitwise_repeatable(backend, dtype, criteo):
    """10 fused lookup + cross forwards: bitwise equal; the first matches float64."""
    table, idx, offs = criteo(4096, 4, 10, dtype, seed=1)
    d = 390
    w = (torch.randn(3, 4, d, d, device=DEV) / d**0.5).to(dtype)
    b = torch.zeros(3, 4, d, device=DEV, dtype=dtype)
    outs = [ops.lookup_cross_network(table, idx, offs, w, b, backend=backend) for _ in range(10)]
    assert all(torch.equal(o, outs[0]) for o in outs[1:]), "forward differs between runs"
    ref = reference.lookup_cross_network(table.double(), idx, offs, w.double(), b.double())
    e = rel(outs[0], ref)
    print("rel error", "%.2e" % e)
    assert e < TOL[dtype]
