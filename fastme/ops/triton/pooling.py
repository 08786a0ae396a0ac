"""Lookup fused with FM pooling or field-weighted (FwFM) pooling: [B, N] indices -> [B, M, K].

The gathered rows stay in registers; [B, M, N, K] never exists in memory, forward or backward
(the backward re-gathers the rows from the table).

FM:   out[b, m] = 0.5 * ((sum_i e_i)^2 - sum_i e_i^2); a program owns a block of the B*M*K outputs,
      loops over the N fields, and reads each row as contiguous M*K runs.
      grad e_i = g * (sum_j e_j - e_i).
FwFM: out[b, m] = sum_i e_i * (R^(m) E)_i over all ordered pairs (i, j), diagonal included; a
      program owns set m and a block of C (sample, k) columns and forms R^(m) E block by block
      of fields (tl.dot of [BLOCK_N, BLOCK_N] weight tiles with gathered [BLOCK_N, C] tiles of E;
      up to 64 fields, one block). Backward, two launches: grad e_i = g * ((R + R^T) E)_i per
      field block, and grad R = sum_cols (E * g) E^T per tile of R, reduced over a fixed number
      of column programs into partial sums (no atomics).
"""

import functools

import torch
import triton
import triton.language as tl

from fastme.ops.triton._common import (
    NUM_WARPS,
    RowGradTarget,
    acc_dtype,
    dot_meta,
    load_rows,
    mma,
    on_input_device,
    pow2,
    tl_dtype,
)

_FM_BLOCK = 1024


# ---- FM -----------------------------------------------------------------------------------------


@triton.jit
def _fm_fwd_kernel(
    TABLE, IDX, OFFS, OUT, num_cols, num_rows, N, MK, BLOCK: tl.constexpr, ACC: tl.constexpr
):
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
def _fm_bwd_kernel(
    TABLE,
    IDX,
    OFFS,
    GRAD,
    DEST,
    DTABLE,
    num_cols,
    num_rows,
    N,
    MK,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
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
        tl.atomic_add(
            DTABLE + dest * MK + j,
            (g * (s - e)).to(DTABLE.dtype.element_ty),
            mask=mask,
            sem="relaxed",
        )


# ---- FwFM ---------------------------------------------------------------------------------------
# The N fields are tiled into blocks of BLOCK_N, so any N runs in bounded registers and shared
# memory: a program holds [BLOCK_N, BLOCK_C] tiles of E and [BLOCK_N, BLOCK_N] tiles of R, never
# all N fields at once. Column c = b * K + k of set m is one (sample, embedding value) pair.


@triton.jit
def _columns(col, num_cols, K):
    """(b, k, mask) of columns ``col`` (int64)."""
    b = col // K
    return b, col - b * K, col < num_cols


@triton.jit
def _gather_fields(TABLE, IDX, OFFS, m, f0, b, k, cmask, num_rows, N, M, K, BLOCK_N: tl.constexpr):
    """E[f0 + i, c] = table[row(b_c, f0 + i), m, k_c]: [BLOCK_N, BLOCK_C], zero-padded."""
    field = f0 + tl.arange(0, BLOCK_N)
    mask = (field < N)[:, None] & cmask[None, :]
    rows = load_rows(IDX, OFFS, b[None, :] * N + field[:, None], field[:, None], num_rows, mask)
    return tl.load(TABLE + rows * (M * K) + m * K + k[None, :], mask=mask, other=0)


@triton.jit
def _weights_tile(R, m, i0, j0, N, BLOCK_N: tl.constexpr):
    """R^(m)[i0:i0+BLOCK_N, j0:j0+BLOCK_N], zero-padded."""
    i = i0 + tl.arange(0, BLOCK_N)
    j = j0 + tl.arange(0, BLOCK_N)
    mask = (i < N)[:, None] & (j < N)[None, :]
    return tl.load(R + m * N * N + i[:, None] * N + j[None, :], mask=mask, other=0)


@triton.jit
def _fwfm_fwd_kernel(
    TABLE,
    IDX,
    OFFS,
    R,
    OUT,
    num_cols,
    num_rows,
    N,
    M,
    K,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """out[:, c] = sum_i E[i, c] (R E)[i, c], by field blocks I (rows of R) and J (columns)."""
    m = tl.program_id(1)
    col = (tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    b, k, cmask = _columns(col, num_cols, K)
    out = tl.zeros([BLOCK_C], ACC)
    for i0 in range(0, N, BLOCK_N):
        t = tl.zeros([BLOCK_N, BLOCK_C], ACC)
        for j0 in range(0, N, BLOCK_N):
            e_j = _gather_fields(TABLE, IDX, OFFS, m, j0, b, k, cmask, num_rows, N, M, K, BLOCK_N)
            t = mma(_weights_tile(R, m, i0, j0, N, BLOCK_N), e_j, t, PREC, UPCAST)
        # E_I is gathered again rather than kept live over the J loop (registers; L1 hits).
        e_i = _gather_fields(TABLE, IDX, OFFS, m, i0, b, k, cmask, num_rows, N, M, K, BLOCK_N)
        out += tl.sum(e_i.to(ACC) * t, axis=0)
    tl.store(OUT + b * (M * K) + m * K + k, out.to(OUT.dtype.element_ty), mask=cmask)


@triton.jit
def _fwfm_bwd_table_kernel(
    TABLE,
    IDX,
    OFFS,
    R,
    GRAD,
    DEST,
    DTABLE,
    num_cols,
    num_rows,
    N,
    M,
    K,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """grad E_I = g * sum_J (R + R^T)[I, J] E_J for field block I = program_id(2), added into
    the table gradient."""
    m = tl.program_id(1)
    i0 = tl.program_id(2) * BLOCK_N
    col = (tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    b, k, cmask = _columns(col, num_cols, K)
    de = tl.zeros([BLOCK_N, BLOCK_C], ACC)
    for j0 in range(0, N, BLOCK_N):
        e_j = _gather_fields(TABLE, IDX, OFFS, m, j0, b, k, cmask, num_rows, N, M, K, BLOCK_N)
        sym = _weights_tile(R, m, i0, j0, N, BLOCK_N).to(ACC) + tl.trans(
            _weights_tile(R, m, j0, i0, N, BLOCK_N)
        ).to(ACC)
        de = mma(sym.to(R.dtype.element_ty), e_j, de, PREC, UPCAST)
    g = tl.load(GRAD + b * (M * K) + m * K + k, mask=cmask, other=0).to(ACC)
    field = i0 + tl.arange(0, BLOCK_N)
    mask = (field < N)[:, None] & cmask[None, :]
    dest = tl.load(DEST + b[None, :] * N + field[:, None], mask=mask, other=0)
    tl.atomic_add(
        DTABLE + dest * (M * K) + m * K + k[None, :],
        (de * g[None, :]).to(DTABLE.dtype.element_ty),
        mask=mask,
        sem="relaxed",
    )


@triton.jit
def _fwfm_bwd_weights_kernel(
    TABLE,
    IDX,
    OFFS,
    GRAD,
    DR_PART,
    num_cols,
    num_rows,
    N,
    M,
    K,
    num_blocks,
    num_programs,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Partial grad R^(m)[I, J] = sum_c g_c E_I[:, c] E_J[:, c]^T over the column blocks
    pid, pid + num_programs, ...; tile (I, J) = program_id(2), written without atomics."""
    pid = tl.program_id(0)
    m = tl.program_id(1)
    tiles = tl.cdiv(N, BLOCK_N)
    i0 = (tl.program_id(2) // tiles) * BLOCK_N
    j0 = (tl.program_id(2) % tiles) * BLOCK_N
    dr = tl.zeros([BLOCK_N, BLOCK_N], ACC)
    for blk in range(pid, num_blocks, num_programs):
        col = (blk * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
        b, k, cmask = _columns(col, num_cols, K)
        g = tl.load(GRAD + b * (M * K) + m * K + k, mask=cmask, other=0).to(ACC)
        e_i = _gather_fields(TABLE, IDX, OFFS, m, i0, b, k, cmask, num_rows, N, M, K, BLOCK_N)
        e_j = _gather_fields(TABLE, IDX, OFFS, m, j0, b, k, cmask, num_rows, N, M, K, BLOCK_N)
        eg = (e_i.to(ACC) * g[None, :]).to(e_i.dtype)
        dr = mma(eg, tl.trans(e_j), dr, PREC, UPCAST)
    i = i0 + tl.arange(0, BLOCK_N)
    j = j0 + tl.arange(0, BLOCK_N)
    tl.store(
        DR_PART + (pid * M + m) * N * N + i[:, None] * N + j[None, :],
        dr,
        mask=(i < N)[:, None] & (j < N)[None, :],
    )


# Tiles of the FwFM kernels: field blocks (the first is used up to 64 fields), columns per
# program, pipeline stages, warps of the weight-gradient kernel. Chosen from the AOT builds
# (tools/triton_aot.py, Triton 3.6 and 3.9): on sm_90 every FwFM kernel and dtype
# then builds with at most 96 KB of shared memory and without register spills, except 8 B in
# the fp32 weight gradient under 3.6 (64-column tiles spilled up to 184 B; 3 stages needed up
# to 193 KB, over sm_80's 163 KB). On sm_80 under 3.9 the fp32 weight-gradient kernel still
# spills (~3 KB/thread).
_FWFM_BLOCK_N = (64, 32)
_FWFM_BLOCK_C = 32
_FWFM_STAGES = 2
_FWFM_WEIGHT_WARPS = 4


def _fwfm_blocks(n: int, num_cols: int):
    """(BLOCK_N, BLOCK_C, column blocks, warps). Up to 64 fields one field block holds them all
    (E is gathered once); above, the block of 64 or 32 fields that pads N least."""
    block_n = pow2(n, lo=16)
    if block_n > _FWFM_BLOCK_N[0]:
        block_n = min(_FWFM_BLOCK_N, key=lambda bn: (triton.cdiv(n, bn) * bn, -bn))
    block_c = pow2(num_cols, lo=16, hi=_FWFM_BLOCK_C)
    warps = 8 if block_n >= 32 else 4
    return block_n, block_c, triton.cdiv(num_cols, block_c), warps


# ---- host side ----------------------------------------------------------------------------------


def _pooled_output(table, indices):
    """The [B, M, K] output of a pooled lookup, and whether it is already final: nothing to
    compute, or no fields to pool (a sum over none is zero)."""
    (b, n), (m, k) = indices.shape, table.shape[1:]
    out = torch.empty((b, m, k), dtype=table.dtype, device=table.device)
    if out.numel() == 0:
        return out, True
    if n == 0:
        return out.zero_(), True
    return out, False


@on_input_device
def fm_forward(table, indices, offsets):
    out, done = _pooled_output(table, indices)
    if done:
        return out
    rows, m, k = table.shape
    b, n = indices.shape
    block = pow2(out.numel(), hi=_FM_BLOCK)
    _fm_fwd_kernel[(triton.cdiv(out.numel(), block),)](
        table,
        indices,
        offsets,
        out,
        out.numel(),
        rows,
        n,
        m * k,
        BLOCK=block,
        ACC=tl_dtype(acc_dtype(table.dtype)),
        num_warps=NUM_WARPS,
    )
    return out


@on_input_device
def fm_backward(grad, table, indices, offsets):
    rows, m, k = table.shape
    b, n = indices.shape
    target = RowGradTarget(indices, offsets, rows, (m, k), table.dtype)
    if b * n * m * k:
        block = pow2(b * m * k, hi=_FM_BLOCK)
        _fm_bwd_kernel[(triton.cdiv(b * m * k, block),)](
            table,
            indices,
            offsets,
            grad,
            target.dest,
            target.acc,
            b * m * k,
            rows,
            n,
            m * k,
            BLOCK=block,
            ACC=tl_dtype(acc_dtype(table.dtype)),
            num_warps=NUM_WARPS,
        )
    return target.finish()


@on_input_device
def fwfm_forward(table, indices, offsets, field_weights):
    out, done = _pooled_output(table, indices)
    if done:
        return out
    rows, m, k = table.shape
    b, n = indices.shape
    block_n, block_c, num_blocks, warps = _fwfm_blocks(n, b * k)
    _fwfm_fwd_kernel[(num_blocks, m)](
        table,
        indices,
        offsets,
        field_weights,
        out,
        b * k,
        rows,
        n,
        m,
        k,
        BLOCK_N=block_n,
        BLOCK_C=block_c,
        **dot_meta(table.dtype),
        num_warps=warps,
        num_stages=_FWFM_STAGES,
    )
    return out


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _fwfm_num_programs(num_blocks: int, num_tiles: int, device: torch.device) -> int:
    """Column programs per (set, weight tile): about 4 per SM in all, few enough to keep the
    [programs, M, N, N] partial sums of grad R small; 2 in the interpreter, where each program
    costs host time."""
    if device.type == "cuda":
        return max(1, min(num_blocks, triton.cdiv(4 * _sm_count(device), num_tiles)))
    return max(1, min(num_blocks, 2))


@on_input_device
def fwfm_backward(grad, table, indices, offsets, field_weights):
    rows, m, k = table.shape
    b, n = indices.shape
    target = RowGradTarget(indices, offsets, rows, (m, k), table.dtype)
    if b * n * m * k == 0:
        return target.finish(), torch.zeros_like(field_weights)
    block_n, block_c, num_blocks, warps = _fwfm_blocks(n, b * k)
    field_blocks = triton.cdiv(n, block_n)
    meta = dict(
        BLOCK_N=block_n,
        BLOCK_C=block_c,
        **dot_meta(table.dtype),
        num_warps=warps,
        num_stages=_FWFM_STAGES,
    )
    _fwfm_bwd_table_kernel[(num_blocks, m, field_blocks)](
        table,
        indices,
        offsets,
        field_weights,
        grad,
        target.dest,
        target.acc,
        b * k,
        rows,
        n,
        m,
        k,
        **meta,
    )
    programs = _fwfm_num_programs(num_blocks, m * field_blocks**2, table.device)
    dr_part = torch.empty((programs, m, n, n), dtype=acc_dtype(table.dtype), device=table.device)
    _fwfm_bwd_weights_kernel[(programs, m, field_blocks**2)](
        table,
        indices,
        offsets,
        grad,
        dr_part,
        b * k,
        rows,
        n,
        m,
        k,
        num_blocks,
        programs,
        **{**meta, "num_warps": _FWFM_WEIGHT_WARPS},
    )
    return target.finish(), dr_part.sum(0).to(field_weights.dtype)
