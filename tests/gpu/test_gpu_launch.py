"""How the ops launch: on misaligned views, on torch's current stream, without blocking the
host."""

import time

import pytest
import torch
from kernel_backends import BACKENDS, on_gpu
from kernel_backends import relative_error as rel

import fastme.ops as ops
from fastme.ops import reference

pytestmark = on_gpu
DEV = "cuda"
backends = pytest.mark.parametrize("backend", BACKENDS)
# ~0.5 s of spinning on an H100/H200 (torch.cuda._sleep counts clock cycles).
SLEEP_CYCLES = 1_000_000_000


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@backends
def test_offset_views(backend, dtype):
    """Every op on contiguous views whose data_ptr % 16 != 0: the 16-byte vector paths must not
    assume alignment."""
    rows, m, k = 500, 2, 8  # K*4 = 32 B runs: vectorisable, but the base is off by one element
    flat = torch.randn(rows * m * k + 1, device=DEV).to(dtype)
    table = flat[1:].view(rows, m, k)
    assert table.is_contiguous() and table.data_ptr() % 16 != 0
    dims = torch.tensor([100, 250, 150])
    offs = (torch.cumsum(dims, 0) - dims).to(DEV)
    idx = torch.stack([torch.randint(0, int(d), (33,)) for d in dims], 1).to(DEV)
    fw = torch.randn(m, 3, 3, device=DEV).to(dtype)
    d = 3 * k
    xflat = torch.randn(33 * m * d + 1, device=DEV).to(dtype)
    x0 = xflat[1:].view(33, m, d)
    w = (torch.randn(2, m, d, d, device=DEV) / d**0.5).to(dtype)
    b = torch.randn(2, m, d, device=DEV).to(dtype)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    cases = [
        (
            "lookup",
            lambda t: ops.multi_embedding_lookup(t, idx, offs, backend=backend),
            lambda t: reference.multi_embedding_lookup(t, idx, offs),
        ),
        (
            "fm",
            lambda t: ops.pooled_lookup(t, idx, offs, backend=backend),
            lambda t: reference.pooled_lookup(t, idx, offs),
        ),
        (
            "fwfm",
            lambda t: ops.pooled_lookup(t, idx, offs, fw, backend=backend),
            lambda t: reference.pooled_lookup(t, idx, offs, fw.double()),
        ),
        (
            "lookup_cross",
            lambda t: ops.lookup_cross_network(t, idx, offs, w, b, backend=backend),
            lambda t: reference.lookup_cross_network(t, idx, offs, w.double(), b.double()),
        ),
    ]
    t = table.detach().requires_grad_()
    for name, f, ref in cases:
        out = f(t)
        tr = table.detach().double().requires_grad_()
        r = ref(tr)
        assert rel(out, r) < tol, f"{name}: forward"
        go = torch.randn_like(r)
        (g1,) = torch.autograd.grad(out, t, go.to(dtype))
        (g2,) = torch.autograd.grad(r, tr, go)
        assert rel(g1, g2) < tol, f"{name}: table gradient"
    out = ops.cross_network(x0, w, b, backend=backend)
    assert rel(out, reference.cross_network(x0.double(), w.double(), b.double())) < tol, "cross"


@backends
def test_ops_run_on_the_current_stream(backend, criteo):
    """Each op on a side stream whose producer is still running: a kernel launched on any other
    stream than torch's current one would read the table before it is filled. Nothing in a call
    may synchronise (bounds check off), or the bug would hide."""
    table, idx, offs = criteo(2048, 4, 10, torch.float32, seed=2)
    fd = torch.cat([offs[1:], offs.new_tensor([table.shape[0]])]) - offs
    src = table.clone()
    d = 390
    w = torch.randn(2, 4, d, d, device=DEV) / d**0.5
    b = torch.zeros(2, 4, d, device=DEV)
    fw = torch.randn(4, 39, 39, device=DEV) / 39
    exp = {
        "lookup": reference.multi_embedding_lookup(src, idx, offs),
        "fm": reference.pooled_lookup(src, idx, offs),
        "fwfm": reference.pooled_lookup(src, idx, offs, fw),
        "cross": reference.lookup_cross_network(src, idx, offs, w, b),
    }
    s = torch.cuda.Stream()
    for _ in range(2):  # the first round compiles/autotunes (host time), the second is the test
        torch.cuda.synchronize()
        table.zero_()
        torch.cuda.synchronize()
        with torch.cuda.stream(s):
            torch.cuda._sleep(SLEEP_CYCLES)  # the device spins before the table is filled
            table.copy_(src)
            t = time.perf_counter()
            got = {
                "lookup": ops.multi_embedding_lookup(
                    table, idx, offs, field_dims=fd, backend=backend
                ),
                "fm": ops.pooled_lookup(table, idx, offs, field_dims=fd, backend=backend),
                "fwfm": ops.pooled_lookup(table, idx, offs, fw, field_dims=fd, backend=backend),
                "cross": ops.lookup_cross_network(
                    table, idx, offs, w, b, field_dims=fd, backend=backend
                ),
            }
            host = time.perf_counter() - t
        s.synchronize()
    print(f"host time of the 4 launches {host * 1e3:.1f} ms (device spinning ~500 ms)")
    for name, value in got.items():
        assert rel(value, exp[name]) < 1e-4, f"{name}: launched on the wrong stream?"


@backends
def test_lookup_does_not_block_the_host(backend, criteo):
    """A lookup without field_dims (bounds check off) returns while earlier work still runs on
    the device: it never waits for the device."""
    table, idx, offs = criteo(256, 1, 10, torch.float32, seed=4)
    ops.multi_embedding_lookup(table, idx, offs, backend=backend)  # compiles/autotunes
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    t = time.perf_counter()
    ops.multi_embedding_lookup(table, idx, offs, backend=backend)
    host = time.perf_counter() - t
    device_busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    print(f"the call returned after {host * 1e3:.1f} ms with ~500 ms of device work queued")
    assert device_busy, f"the call waited for the device ({host * 1e3:.0f} ms)"
