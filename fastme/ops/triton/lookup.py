"""Grouped multi-set embedding lookup: one launch gathers every field of every set.

Forward: table [rows, M, K], indices [B, N] -> emb [B, M, N, K]. A program owns a tile of
(sample, field) pairs x a chunk of the M*K values of their rows: each table row is read as one
contiguous M*K run and scattered into the M per-set slices of the output.

Backward: the dense table gradient, by atomic adds of each pair's output gradient into its row
(see docs/ops.md for why atomics rather than sort + segment reduce).
"""

import torch
import triton
import triton.language as tl

from fastme.ops.triton._common import NUM_WARPS, RowGradTarget, load_rows, on_input_device, pow2

# Elements (pairs x row values) per program.
_TILE = 1024


@triton.jit
def _pair_tile(num_pairs, N, K, MK, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile: pair ids p = b*N + field (rows) by row-value ids c = m*K + k (columns).
    Returns p (int64), c, the pair mask, the field, the tile mask and the offsets of
    emb[b, m, field, k] in the [B, M, N, K] embeddings (b * M*N*K == b * N * MK)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask = p < num_pairs
    p = p.to(tl.int64)
    b = p // N
    field = p - b * N
    mask = pmask[:, None] & (c < MK)[None, :]
    m = c // K
    k = c - m * K
    offsets = (b * N * MK)[:, None] + (m * (N * K) + k)[None, :] + (field * K)[:, None]
    return p, c, pmask, field, mask, offsets


@triton.jit
def _lookup_fwd_kernel(
    TABLE,
    IDX,
    OFFS,
    OUT,
    num_pairs,
    num_rows,
    N,
    K,
    MK,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    p, c, pmask, field, mask, dst = _pair_tile(num_pairs, N, K, MK, BLOCK_P, BLOCK_C)
    rows = load_rows(IDX, OFFS, p, field, num_rows, pmask)
    vals = tl.load(TABLE + rows[:, None] * MK + c[None, :], mask=mask)
    tl.store(OUT + dst, vals, mask=mask)


@triton.jit
def _lookup_bwd_kernel(
    GRAD, DEST, ACC, num_pairs, N, K, MK, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr
):
    p, c, pmask, field, mask, src = _pair_tile(num_pairs, N, K, MK, BLOCK_P, BLOCK_C)
    g = tl.load(GRAD + src, mask=mask, other=0).to(ACC.dtype.element_ty)
    dest = tl.load(DEST + p, mask=pmask, other=0)
    tl.atomic_add(ACC + dest[:, None] * MK + c[None, :], g, mask=mask, sem="relaxed")


def _grid(num_pairs: int, mk: int):
    block_c = pow2(mk, hi=1024)
    block_p = pow2(num_pairs, hi=max(1, _TILE // block_c))
    return (triton.cdiv(num_pairs, block_p), triton.cdiv(mk, block_c)), block_p, block_c


@on_input_device
def lookup_forward(
    table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    (b, n), (rows, m, k) = indices.shape, table.shape
    out = torch.empty((b, m, n, k), dtype=table.dtype, device=table.device)
    if out.numel() == 0:
        return out
    grid, block_p, block_c = _grid(b * n, m * k)
    _lookup_fwd_kernel[grid](
        table,
        indices,
        offsets,
        out,
        b * n,
        rows,
        n,
        k,
        m * k,
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        num_warps=NUM_WARPS,
    )
    return out


@on_input_device
def scatter_add_rows(target: RowGradTarget, grad: torch.Tensor) -> None:
    """Add grad [B, M, N, K] (one gradient per (sample, field) pair and set) into ``target``."""
    b, m, n, k = grad.shape
    if grad.numel() == 0:
        return
    grid, block_p, block_c = _grid(b * n, m * k)
    _lookup_bwd_kernel[grid](
        grad,
        target.dest,
        target.acc,
        b * n,
        n,
        k,
        m * k,
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        num_warps=NUM_WARPS,
    )


def lookup_backward(
    grad: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """Dense table gradient [num_rows, M, K] of the lookup, duplicates summed."""
    _, m, _, k = grad.shape
    target = RowGradTarget(indices, offsets, num_rows, (m, k), grad.dtype)
    scatter_add_rows(target, grad)
    return target.finish()
