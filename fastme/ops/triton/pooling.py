"""Lookup fused with FM pooling or field-weighted (FwFM) pooling: [B, N] indices -> [B, M, K].

The gathered rows stay in registers; [B, M, N, K] never exists in memory, forward or backward
(the backward re-gathers the rows from the table).

FM:   out[b, m] = 0.5 * ((sum_i e_i)^2 - sum_i e_i^2); a program owns a block of the B*M*K outputs,
      loops over the N fields, and reads each row as contiguous M*K runs.
      grad e_i = g * (sum_j e_j - e_i).
FwFM: out[b, m] = sum_i e_i * (R^(m) E)_i over all ordered pairs (i, j), diagonal included; a
      program owns set m and a block of C (sample, k) columns, gathers E [N, C] once and forms
      R^(m) E with one tl.dot. grad e_i = g * ((R + R^T) E)_i, grad R = sum_cols (E * g) E^T,
      reduced over a fixed number of column programs into partial sums (no atomics).
"""

import functools

import torch
import triton
import triton.language as tl

from fastme.ops.triton._common import (NUM_WARPS, RowGradTarget, acc_dtype, contiguous,
                                       dot_meta, load_rows, mma, pow2, tl_dtype)

_FM_BLOCK = 1024


# ---- FM -----------------------------------------------------------------------------------------

@triton.jit
def _fm_fwd_kernel(TABLE, IDX, OFFS, OUT, num_cols, num_rows, N, MK,
                   BLOCK: tl.constexpr, ACC: tl.constexpr):
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # over B * M*K
    mask = c < num_cols
    c = c.to(tl.int64)
    b = c // MK
    j = c - b * MK
    s = tl.zeros([BLOCK], ACC)
    q = tl.zeros([BLOCK], ACC)
    for i in range(N):
        rows = load_rows(IDX, OFFS, b * N + i, i, num_rows, mask)
        e = tl.load(TABLE + rows * MK + j, mask=mask, other=0).to(ACC)
        s += e
        q += e * e
    tl.store(OUT + c, (0.5 * (s * s - q)).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _fm_bwd_kernel(TABLE, IDX, OFFS, GRAD, DEST, DTABLE, num_cols, num_rows, N, MK,
                   BLOCK: tl.constexpr, ACC: tl.constexpr):
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = c < num_cols
    c = c.to(tl.int64)
    b = c // MK
    j = c - b * MK
    g = tl.load(GRAD + c, mask=mask, other=0).to(ACC)
    s = tl.zeros([BLOCK], ACC)
    for i in range(N):
        rows = load_rows(IDX, OFFS, b * N + i, i, num_rows, mask)
        s += tl.load(TABLE + rows * MK + j, mask=mask, other=0).to(ACC)
    for i in range(N):
        rows = load_rows(IDX, OFFS, b * N + i, i, num_rows, mask)
        e = tl.load(TABLE + rows * MK + j, mask=mask, other=0).to(ACC)
        dest = tl.load(DEST + b * N + i, mask=mask, other=0)
        tl.atomic_add(DTABLE + dest * MK + j, (g * (s - e)).to(DTABLE.dtype.element_ty),
                      mask=mask, sem="relaxed")


# ---- FwFM ---------------------------------------------------------------------------------------

@triton.jit
def _gather_set_columns(TABLE, IDX, OFFS, m, col, num_cols, num_rows, N, M, K,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """E [BLOCK_N, BLOCK_C]: E[i, c] = table[row(b, i), m, k] for column c = b * K + k."""
    cmask = col < num_cols
    b = col // K
    k = col - b * K
    field = tl.arange(0, BLOCK_N)
    mask = (field < N)[:, None] & cmask[None, :]
    rows = load_rows(IDX, OFFS, b[None, :] * N + field[:, None], field[:, None], num_rows, mask)
    e = tl.load(TABLE + rows * (M * K) + m * K + k[None, :], mask=mask, other=0)
    return e, rows, mask, b, k, cmask


@triton.jit
def _fwfm_fwd_kernel(TABLE, IDX, OFFS, R, OUT, num_cols, num_rows, N, M, K,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                     ACC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    m = tl.program_id(1)
    col = (tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)  # over B * K
    e, _, _, b, k, cmask = _gather_set_columns(TABLE, IDX, OFFS, m, col, num_cols, num_rows,
                                               N, M, K, BLOCK_N, BLOCK_C)
    i = tl.arange(0, BLOCK_N)
    rmask = (i < N)[:, None] & (i < N)[None, :]
    r = tl.load(R + m * N * N + i[:, None] * N + i[None, :], mask=rmask, other=0)
    t = mma(r, e, tl.zeros([BLOCK_N, BLOCK_C], ACC), PREC, UPCAST)  # (R E)[i, c]
    out = tl.sum(e.to(ACC) * t, axis=0)
    tl.store(OUT + b * (M * K) + m * K + k, out.to(OUT.dtype.element_ty), mask=cmask)


@triton.jit
def _fwfm_bwd_kernel(TABLE, IDX, OFFS, R, GRAD, DEST, DTABLE, DR_PART, num_cols, num_rows,
                     N, M, K, num_blocks, num_programs,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                     ACC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    m = tl.program_id(1)
    i = tl.arange(0, BLOCK_N)
    rmask = (i < N)[:, None] & (i < N)[None, :]
    r_ptr = R + m * N * N
    r = tl.load(r_ptr + i[:, None] * N + i[None, :], mask=rmask, other=0).to(ACC)
    r_t = tl.load(r_ptr + i[None, :] * N + i[:, None], mask=rmask, other=0).to(ACC)
    sym = (r + r_t).to(R.dtype.element_ty)
    dr = tl.zeros([BLOCK_N, BLOCK_N], ACC)
    for blk in range(pid, num_blocks, num_programs):
        col = (blk * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
        e, rows, mask, b, k, cmask = _gather_set_columns(TABLE, IDX, OFFS, m, col, num_cols,
                                                         num_rows, N, M, K, BLOCK_N, BLOCK_C)
        g = tl.load(GRAD + b * (M * K) + m * K + k, mask=cmask, other=0).to(ACC)
        de = mma(sym, e, tl.zeros([BLOCK_N, BLOCK_C], ACC), PREC, UPCAST) * g[None, :]
        dest = tl.load(DEST + b[None, :] * N + i[:, None], mask=mask, other=0)
        tl.atomic_add(DTABLE + dest * (M * K) + m * K + k[None, :],
                      de.to(DTABLE.dtype.element_ty), mask=mask, sem="relaxed")
        eg = (e.to(ACC) * g[None, :]).to(e.dtype)
        dr = mma(eg, tl.trans(e), dr, PREC, UPCAST)
    tl.store(DR_PART + (pid * M + m) * N * N + i[:, None] * N + i[None, :], dr, mask=rmask)


def _fwfm_blocks(n: int, num_cols: int):
    """(BLOCK_N, BLOCK_C, column blocks, warps): tiles sized so that E [N, C], R E and the
    [N, N] weights stay in registers without spilling (checked on sm_90 builds)."""
    block_n = pow2(n, lo=16)
    block_c = pow2(num_cols, lo=16, hi=64)
    warps = 8 if block_n >= 32 else 4
    return block_n, block_c, triton.cdiv(num_cols, block_c), warps


# ---- host side ----------------------------------------------------------------------------------

def _prepare(table, indices, offsets, field_weights=None):
    table, indices, offsets = contiguous(table, indices, offsets)
    if field_weights is not None:
        field_weights = field_weights.contiguous()
    return table, indices, offsets, field_weights


def fm_forward(table, indices, offsets):
    table, indices, offsets, _ = _prepare(table, indices, offsets)
    rows, m, k = table.shape
    b, n = indices.shape
    out = torch.empty((b, m, k), dtype=table.dtype, device=table.device)
    if out.numel() == 0:
        return out
    if n == 0:
        return out.zero_()
    block = pow2(out.numel(), hi=_FM_BLOCK)
    _fm_fwd_kernel[(triton.cdiv(out.numel(), block),)](
        table, indices, offsets, out, out.numel(), rows, n, m * k,
        BLOCK=block, ACC=tl_dtype(acc_dtype(table.dtype)), num_warps=NUM_WARPS)
    return out


def fm_backward(grad, table, indices, offsets):
    table, indices, offsets, _ = _prepare(table, indices, offsets)
    rows, m, k = table.shape
    b, n = indices.shape
    target = RowGradTarget(indices, offsets, rows, (m, k), table.dtype)
    if b * n * m * k:
        block = pow2(b * m * k, hi=_FM_BLOCK)
        _fm_bwd_kernel[(triton.cdiv(b * m * k, block),)](
            table, indices, offsets, grad.contiguous(), target.dest, target.acc, b * m * k, rows,
            n, m * k, BLOCK=block, ACC=tl_dtype(acc_dtype(table.dtype)), num_warps=NUM_WARPS)
    return target.finish()


def fwfm_forward(table, indices, offsets, field_weights):
    table, indices, offsets, field_weights = _prepare(table, indices, offsets, field_weights)
    rows, m, k = table.shape
    b, n = indices.shape
    out = torch.empty((b, m, k), dtype=table.dtype, device=table.device)
    if out.numel() == 0:
        return out
    if n == 0:
        return out.zero_()
    block_n, block_c, num_blocks, warps = _fwfm_blocks(n, b * k)
    _fwfm_fwd_kernel[(num_blocks, m)](
        table, indices, offsets, field_weights, out, b * k, rows, n, m, k,
        BLOCK_N=block_n, BLOCK_C=block_c, **dot_meta(table.dtype), num_warps=warps)
    return out


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _fwfm_num_programs(num_blocks: int, num_sets: int, device: torch.device) -> int:
    """Column programs per set: about 4 per SM in all, few enough to keep the [programs, M, N, N]
    partial sums of grad R small; 2 in the interpreter, where each program costs host time."""
    if device.type == "cuda":
        return max(1, min(num_blocks, triton.cdiv(4 * _sm_count(device), num_sets)))
    return max(1, min(num_blocks, 2))


def fwfm_backward(grad, table, indices, offsets, field_weights):
    table, indices, offsets, field_weights = _prepare(table, indices, offsets, field_weights)
    rows, m, k = table.shape
    b, n = indices.shape
    target = RowGradTarget(indices, offsets, rows, (m, k), table.dtype)
    if b * n * m * k == 0:
        return target.finish(), torch.zeros_like(field_weights)
    block_n, block_c, num_blocks, warps = _fwfm_blocks(n, b * k)
    programs = _fwfm_num_programs(num_blocks, m, table.device)
    dr_part = torch.empty((programs, m, n, n), dtype=acc_dtype(table.dtype), device=table.device)
    _fwfm_bwd_kernel[(programs, m)](
        table, indices, offsets, field_weights, grad.contiguous(), target.dest, target.acc, dr_part,
        b * k, rows, n, m, k, num_blocks, programs,
        BLOCK_N=block_n, BLOCK_C=block_c, **dot_meta(table.dtype), num_warps=warps)
    return target.finish(), dr_part.sum(0).to(field_weights.dtype)
