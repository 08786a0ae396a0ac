"""Sizes the interpreter cannot reach: tables and outputs past 2^31 elements (64-bit offsets),
batches of 2^20 rows, FwFM with more fields than one tile."""

import pytest
import torch
from kernel_backends import BACKENDS, on_gpu
from kernel_backends import relative_error as rel

import fastme.ops as ops
from fastme.ops import reference

pytestmark = on_gpu
DEV = "cuda"
backends = pytest.mark.parametrize("backend", BACKENDS)

BIG_M, BIG_K = 4, 16
BIG_ROWS = (1 << 31) // (BIG_M * BIG_K) + 4096  # element offset of the last rows > 2^31


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@backends
def test_table_past_2_31_elements(backend, dtype):
    """Lookup, FM and FwFM forward and backward on the last rows of a table of more than 2^31
    elements: the row arithmetic must be 64-bit."""
    table = torch.empty(BIG_ROWS, BIG_M, BIG_K, device=DEV, dtype=dtype)
    table[-8192:].normal_()
    table[:8].normal_()
    dims = torch.tensor([4, BIG_ROWS - 4 - 1000, 1000])
    offs = (torch.cumsum(dims, 0) - dims).to(DEV)
    g = torch.Generator().manual_seed(0)
    idx = torch.stack(
        [
            torch.randint(0, 4, (64,), generator=g),
            torch.randint(int(dims[1]) - 3000, int(dims[1]), (64,), generator=g),
            torch.randint(0, 1000, (64,), generator=g),
        ],
        1,
    ).to(DEV)
    rows = (idx + offs).reshape(-1)
    assert int(rows.max()) * BIG_M * BIG_K > (1 << 31)
    fw = torch.randn(BIG_M, 3, 3, device=DEV, dtype=dtype)
    out = ops.multi_embedding_lookup(table, idx, offs, backend=backend)
    exp = table[rows].reshape(64, 3, BIG_M, BIG_K).permute(0, 2, 1, 3)
    assert torch.equal(out, exp), "lookup wrong past 2^31"
    fm = ops.pooled_lookup(table, idx, offs, backend=backend)
    assert rel(fm, reference.fm_pooling(exp.double())) < 2e-2, "FM wrong"
    fwfm = ops.pooled_lookup(table, idx, offs, fw, backend=backend)
    assert rel(fwfm, reference.fwfm_pooling(exp.double(), fw.double())) < 3e-2, "FwFM wrong"
    t = table.detach().requires_grad_()
    gout = torch.randn(64, BIG_M, 3, BIG_K, device=DEV, dtype=dtype)
    (gt,) = torch.autograd.grad(ops.multi_embedding_lookup(t, idx, offs, backend=backend), t, gout)
    exp_g = torch.zeros(BIG_ROWS, BIG_M, BIG_K, device=DEV)
    exp_g.index_add_(0, rows, gout.permute(0, 2, 1, 3).reshape(-1, BIG_M, BIG_K).float())
    ur = rows.unique()
    assert rel(gt[ur], exp_g[ur]) < 1e-2, "table gradient wrong past 2^31"
    if dtype == torch.float32:
        assert float(gt[8:-8192].abs().max()) == 0, "rows no pair touched changed"
    del exp_g
    (gt,) = torch.autograd.grad(ops.pooled_lookup(t, idx, offs, backend=backend).sum(), t)
    assert torch.isfinite(gt[ur]).all() and float(gt[ur].abs().sum()) > 0


@backends
def test_large_batch(backend, criteo):
    """B = 2^20, N = 39, K = 64 in bfloat16: the lookup output has more than 2^31 elements, so its
    offsets need 64 bits (spot-checked against direct indexing); FM at that batch, cross at 2^18."""
    table, idx, offs = criteo(1 << 20, 1, 64, torch.bfloat16, seed=3)
    out = ops.multi_embedding_lookup(table, idx, offs, backend=backend)
    assert out.numel() > (1 << 31)
    pick = torch.cat(
        [torch.arange(64), torch.randint(0, 1 << 20, (256,)), torch.arange((1 << 20) - 64, 1 << 20)]
    ).to(DEV)
    rows = (idx[pick] + offs).reshape(-1)
    exp = table[rows].reshape(pick.numel(), 39, 1, 64).permute(0, 2, 1, 3)
    assert torch.equal(out[pick], exp), "lookup wrong for a > 2^31-element output"
    del out
    torch.cuda.empty_cache()
    fm = ops.pooled_lookup(table, idx, offs, backend=backend)
    assert rel(fm[pick], reference.fm_pooling(exp.double())) < 2e-2, "FM"
    del fm, table, idx
    x0 = torch.randn(1 << 18, 2, 64, device=DEV)
    w = torch.randn(2, 2, 64, 64, device=DEV) / 8
    b = torch.zeros(2, 2, 64, device=DEV)
    assert (
        rel(ops.cross_network(x0, w, b, backend=backend), reference.cross_network(x0, w, b)) < 1e-4
    ), "cross"


@pytest.mark.parametrize(
    "n_fields, dtype",
    [(70, torch.float32), (70, torch.bfloat16), (256, torch.float32)],
    ids=["N70-float32", "N70-bfloat16", "N256-float32"],
)
@backends
def test_fwfm_more_fields_than_a_tile(backend, n_fields, dtype):
    """FwFM pooling forward and backward with N = 70 and 256 fields: the Triton kernels tile the
    fields (blocks of 64 or 32), so these take the multi-tile paths, which the interpreter checks
    but never at speed."""
    g = torch.Generator().manual_seed(5)
    dims = torch.randint(2, 50, (n_fields,), generator=g)
    idx = torch.stack([torch.randint(0, int(d), (512,), generator=g) for d in dims], 1).to(DEV)
    offs = (torch.cumsum(dims, 0) - dims).to(DEV)
    table = torch.randn(int(dims.sum()), 2, 10, device=DEV).to(dtype)
    fw = (torch.randn(2, n_fields, n_fields, device=DEV) / n_fields).to(dtype)
    t = table.detach().requires_grad_()
    r = fw.detach().requires_grad_()
    out = ops.pooled_lookup(t, idx, offs, r, backend=backend)
    gt, gr = torch.autograd.grad(out, (t, r), torch.ones_like(out))
    tr = table.detach().double().requires_grad_()
    rr = fw.detach().double().requires_grad_()
    ref = reference.pooled_lookup(tr, idx, offs, rr)
    et, er = torch.autograd.grad(ref, (tr, rr), torch.ones_like(ref))
    e = [rel(out, ref), rel(gt, et), rel(gr, er)]
    print("rel errors out/dtable/dR", ["%.1e" % x for x in e])
    assert max(e) <= (3e-2 if dtype == torch.bfloat16 else 1e-4), e
