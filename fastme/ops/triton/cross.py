"""Per-set DCNv2 cross network, all L layers of all M sets in one kernel per direction.

x_{l+1} = x_0 * (W_l^(m) x_l + b_l^(m)) + x_l,  x0 [B, M, D], W [L, M, D, D], b [L, M, D].

Forward (one launch): a program owns BLOCK_B samples of one set m and runs every layer. For each
BLOCK_D slice of outputs it streams W_l^(m) through tl.dot against the program's x_l, then
applies bias, Hadamard product with x_0 and the residual in registers and writes x_{l+1}. The
program's x_l (BLOCK_B x D, ~100 KB) is re-read from L1/L2 between layers, because a register
tile cannot be sliced into the K-blocks of the next layer's product; x_1..x_{L-1} are kept for
the backward ("states", (L-1)·B·M·D elements). With the lookup fused in front, x_0 is gathered
from the table by the same program first (and kept too, as the backward needs it).

Backward (two launches):
  1. the chain, per program of BLOCK_B samples of set m, layers in reverse: recompute
     z_l = W_l x_l + b_l from the saved x_l (one product), u_l = x_0 * g_{l+1},
     grad x_0 += g_{l+1} * z_l, g_l = g_{l+1} + u_l W_l (second product); u_l is written out;
  2. the weight gradient, a GEMM over the batch: dW_l^(m) = sum_b u_l x_l^T, db_l^(m) = sum_b u_l.
     It is a reduction over all samples, which a batch-tiled program cannot finish without D^2
     atomics per tile, hence its own launch.
"""

import torch
import triton
import triton.language as tl

from fastme.ops.triton._common import acc_dtype, autotune, dot_meta, load_rows, mma, on_input_device
from fastme.ops.triton.lookup import lookup_forward

# Launch configurations; the autotuner picks among them per (M, D, L) at the first call, the
# interpreter runs one small configuration. Their builds (tools/triton_aot.py,
# Triton 3.6 and 3.9, D = 390 and 1280) all fit in shared memory (at most 128 KB), but several
# use all 255 registers and spill: on sm_90 up to 64 B/thread (fp32 forward, 64 x 64 tiles),
# 56 B (fp32 backward), 48 B (fp64); on sm_80 up to 920 B (fp32 weight gradient, 64 x 64 x 64)
# and 688 B (fp32 forward, 64 x 64); these are Triton 3.9's numbers, 3.6 spills at most 48 B on
# sm_90 and 136 B on sm_80. Whether a spilling configuration still wins is for the autotuner to
# measure on the GPU.
_C = triton.Config
_FWD_CONFIGS = [
    _C({"BLOCK_B": 64, "BLOCK_D": 64}, num_warps=8, num_stages=3),
    _C({"BLOCK_B": 64, "BLOCK_D": 32}, num_warps=8, num_stages=2),
    _C({"BLOCK_B": 32, "BLOCK_D": 32}, num_warps=4, num_stages=2),
]
_BWD_CONFIGS = [
    _C({"BLOCK_B": 64, "BLOCK_D": 32}, num_warps=8, num_stages=2),
    _C({"BLOCK_B": 32, "BLOCK_D": 32}, num_warps=4, num_stages=2),
]
_WGRAD_CONFIGS = [
    _C({"BLOCK_O": 64, "BLOCK_I": 64, "BLOCK_B": 32}, num_warps=4, num_stages=3),
    _C({"BLOCK_O": 128, "BLOCK_I": 64, "BLOCK_B": 32}, num_warps=8, num_stages=3),
    _C({"BLOCK_O": 64, "BLOCK_I": 64, "BLOCK_B": 64}, num_warps=4, num_stages=3),
    _C({"BLOCK_O": 32, "BLOCK_I": 32, "BLOCK_B": 32}, num_warps=4, num_stages=2),
]
_INTERP_CHAIN = _C({"BLOCK_B": 16, "BLOCK_D": 32})
_INTERP_WGRAD = _C({"BLOCK_O": 32, "BLOCK_I": 32, "BLOCK_B": 16})


# Every [B, M, D] buffer is addressed per program as ``P + prog`` (an int64 scalar: the program's
# first sample, its set m) plus int32 tile offsets ``rows[:, None] + cols[None, :]`` with
# rows = local sample * M*D: 32-bit offset tiles halve the registers that 64-bit ones would take.


@triton.jit
def _tile(P, rows, cols, bmask, D):
    """[BLOCK_B, BLOCK_D] tile, zero-padded. ``.cg``: these buffers are written by the same
    program earlier in the kernel; reading them through L2 rules out a stale L1 line."""
    mask = bmask[:, None] & (cols < D)[None, :]
    return tl.load(P + rows[:, None] + cols[None, :], mask=mask, other=0, cache_modifier=".cg")


@triton.jit
def _store_tile(P, rows, cols, bmask, D, value):
    mask = bmask[:, None] & (cols < D)[None, :]
    tl.store(P + rows[:, None] + cols[None, :], value.to(P.dtype.element_ty), mask=mask)


@triton.jit
def _times_w(
    A,
    W_l,
    rows,
    bmask,
    n,
    D,
    TRANSPOSED: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """(a W_l^T)[:, n] when TRANSPOSED (n indexes outputs of W_l, which is [D_out, D_in]), else
    (a W_l)[:, n] (n indexes inputs), for the program's samples."""
    acc = tl.zeros([BLOCK_B, BLOCK_D], ACC)
    for k0 in range(0, D, BLOCK_D):
        kk = k0 + tl.arange(0, BLOCK_D)
        a = _tile(A, rows, kk, bmask, D)
        if TRANSPOSED:
            w_ptrs = W_l + n[None, :] * D + kk[:, None]  # [k, n] = W[n, k]
        else:
            w_ptrs = W_l + kk[:, None] * D + n[None, :]
        w = tl.load(w_ptrs, mask=(kk < D)[:, None] & (n < D)[None, :], other=0)
        acc = mma(a, w, acc, PREC, UPCAST)
    return acc


@triton.jit
def _program_rows(B, M, D, BLOCK_B: tl.constexpr):
    """(prog, rows, bmask, bmd) of this program's BLOCK_B samples of set m = program_id(1)."""
    b0 = tl.program_id(0) * BLOCK_B
    lb = tl.arange(0, BLOCK_B)
    prog = (tl.cast(b0, tl.int64) * M + tl.program_id(1)) * D
    return prog, lb * (M * D), b0 + lb < B, tl.cast(B, tl.int64) * M * D


@autotune(_FWD_CONFIGS, _INTERP_CHAIN, key=["M", "D", "L"])
@triton.jit
def _cross_fwd_kernel(
    X0,
    W,
    BIAS,
    STATES,
    OUT,
    TABLE,
    IDX,
    OFFS,
    B,
    M,
    D,
    L,
    N,
    K,
    num_rows,
    GATHER: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    m = tl.program_id(1)
    prog, rows, bmask, bmd = _program_rows(B, M, D, BLOCK_B)
    x0 = X0 + prog
    if GATHER:
        # x_0[b, m, f*K + k] = table[row(b, f), m, k]
        b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            f = d // K
            mask = bmask[:, None] & (d < D)[None, :]
            table_rows = load_rows(
                IDX, OFFS, b[:, None].to(tl.int64) * N + f[None, :], f[None, :], num_rows, mask
            )
            v = tl.load(
                TABLE + table_rows * (M * K) + m * K + (d - f * K)[None, :], mask=mask, other=0
            )
            _store_tile(x0, rows, d, bmask, D, v)
        tl.debug_barrier()
    for l in range(L):
        if l == 0:
            src = x0
        else:
            src = STATES + (l - 1) * bmd + prog
        if l == L - 1:
            dst = OUT + prog
        else:
            dst = STATES + l * bmd + prog
        w_l = W + (l * M + m).to(tl.int64) * D * D
        for n0 in range(0, D, BLOCK_D):
            n = n0 + tl.arange(0, BLOCK_D)
            z = _times_w(src, w_l, rows, bmask, n, D, True, BLOCK_B, BLOCK_D, ACC, PREC, UPCAST)
            z += tl.load(BIAS + (l * M + m) * D + n, mask=n < D, other=0).to(ACC)[None, :]
            x = _tile(src, rows, n, bmask, D).to(ACC)
            _store_tile(dst, rows, n, bmask, D, _tile(x0, rows, n, bmask, D).to(ACC) * z + x)
        tl.debug_barrier()  # x_{l+1} complete before the next layer reads it


@triton.jit
def _cross_bwd_layer(
    x0,
    x_l,
    g_in,
    g_out,
    u_l,
    dx0,
    w_l,
    bias_l,
    rows,
    bmask,
    D,
    TOP: tl.constexpr,
    BOTTOM: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One layer of the backward chain. g_in = grad x_{l+1}; writes u_l, adds g_in * z_l into
    dx0 (TOP: the first layer visited writes it), then writes g_out = grad x_l, or adds it
    into dx0 at the BOTTOM layer (l = 0)."""
    # phase 1, over the outputs n of the layer
    for n0 in range(0, D, BLOCK_D):
        n = n0 + tl.arange(0, BLOCK_D)
        z = _times_w(x_l, w_l, rows, bmask, n, D, True, BLOCK_B, BLOCK_D, ACC, PREC, UPCAST)
        z += tl.load(bias_l + n, mask=n < D, other=0).to(ACC)[None, :]
        g = _tile(g_in, rows, n, bmask, D).to(ACC)
        _store_tile(u_l, rows, n, bmask, D, _tile(x0, rows, n, bmask, D).to(ACC) * g)
        if TOP:
            _store_tile(dx0, rows, n, bmask, D, g * z)
        else:
            _store_tile(dx0, rows, n, bmask, D, _tile(dx0, rows, n, bmask, D) + g * z)
    tl.debug_barrier()  # u_l complete
    # phase 2, over the inputs n of the layer
    for n0 in range(0, D, BLOCK_D):
        n = n0 + tl.arange(0, BLOCK_D)
        g = _times_w(u_l, w_l, rows, bmask, n, D, False, BLOCK_B, BLOCK_D, ACC, PREC, UPCAST)
        g += _tile(g_in, rows, n, bmask, D).to(ACC)
        if BOTTOM:
            _store_tile(dx0, rows, n, bmask, D, _tile(dx0, rows, n, bmask, D) + g)
        else:
            _store_tile(g_out, rows, n, bmask, D, g)
    tl.debug_barrier()  # grad x_l complete


@autotune(_BWD_CONFIGS, _INTERP_CHAIN, key=["M", "D", "L"])
@triton.jit
def _cross_bwd_kernel(
    X0,
    W,
    BIAS,
    STATES,
    GOUT,
    U,
    GBUF,
    DX0,
    B,
    M,
    D,
    L,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Layers in reverse. grad x_{l+1} lives in GOUT for the top layer, then alternates between
    the two halves of GBUF (fp32 even for 16-bit inputs). The top and bottom layers are peeled
    so that every layer body sees pointers of one type."""
    m = tl.program_id(1)
    prog, rows, bmask, bmd = _program_rows(B, M, D, BLOCK_B)
    x0 = X0 + prog
    dx0 = DX0 + prog
    top = L - 1
    if top == 0:
        _cross_bwd_layer(
            x0,
            x0,
            GOUT + prog,
            dx0,
            U + prog,
            dx0,
            W + m * D * D,
            BIAS + m * D,
            rows,
            bmask,
            D,
            True,
            True,
            BLOCK_B,
            BLOCK_D,
            ACC,
            PREC,
            UPCAST,
        )
    else:
        _cross_bwd_layer(
            x0,
            STATES + (top - 1) * bmd + prog,
            GOUT + prog,
            GBUF + (top % 2) * bmd + prog,
            U + top * bmd + prog,
            dx0,
            W + (top * M + m).to(tl.int64) * D * D,
            BIAS + (top * M + m) * D,
            rows,
            bmask,
            D,
            True,
            False,
            BLOCK_B,
            BLOCK_D,
            ACC,
            PREC,
            UPCAST,
        )
        for i in range(1, top):
            l = top - i
            _cross_bwd_layer(
                x0,
                STATES + (l - 1) * bmd + prog,
                GBUF + ((l + 1) % 2) * bmd + prog,
                GBUF + (l % 2) * bmd + prog,
                U + l * bmd + prog,
                dx0,
                W + (l * M + m).to(tl.int64) * D * D,
                BIAS + (l * M + m) * D,
                rows,
                bmask,
                D,
                False,
                False,
                BLOCK_B,
                BLOCK_D,
                ACC,
                PREC,
                UPCAST,
            )
        _cross_bwd_layer(
            x0,
            x0,
            GBUF + bmd + prog,
            dx0,
            U + prog,
            dx0,
            W + m * D * D,
            BIAS + m * D,
            rows,
            bmask,
            D,
            False,
            True,
            BLOCK_B,
            BLOCK_D,
            ACC,
            PREC,
            UPCAST,
        )


@autotune(_WGRAD_CONFIGS, _INTERP_WGRAD, key=["M", "D"], block_args=("BLOCK_O", "BLOCK_I"))
@triton.jit
def _cross_wgrad_kernel(
    U,
    X0,
    STATES,
    DW,
    DB,
    B,
    M,
    D,
    BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_B: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dW[l, m] = sum_b u_l[b, m]^T x_l[b, m] ([D_out, D_in]); db[l, m] = sum_b u_l[b, m]."""
    lm = tl.program_id(1)
    l = lm // M
    m = lm - l * M
    tiles_i = tl.cdiv(D, BLOCK_I)
    pid_o = tl.program_id(0) // tiles_i
    pid_i = tl.program_id(0) - pid_o * tiles_i
    ro = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    ri = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    bmd = tl.cast(B, tl.int64) * M * D
    u_l = U + l * bmd + m * D
    if l == 0:
        x_l = X0 + m * D
    else:
        x_l = STATES + (l - 1) * bmd + m * D
    acc = tl.zeros([BLOCK_O, BLOCK_I], ACC)
    db = tl.zeros([BLOCK_O], ACC)
    lb = tl.arange(0, BLOCK_B)
    for b0 in range(0, B, BLOCK_B):
        bmask = b0 + lb < B
        off = tl.cast(b0, tl.int64) * M * D
        u_t = tl.load(
            u_l + off + lb[None, :] * (M * D) + ro[:, None],
            mask=bmask[None, :] & (ro < D)[:, None],
            other=0,
        )  # [o, b]
        x = tl.load(
            x_l + off + lb[:, None] * (M * D) + ri[None, :],
            mask=bmask[:, None] & (ri < D)[None, :],
            other=0,
        )  # [b, i]
        acc = mma(u_t, x, acc, PREC, UPCAST)
        db += tl.sum(u_t.to(ACC), axis=1)
    out = lm.to(tl.int64) * D * D + ro[:, None] * D + ri[None, :]
    tl.store(DW + out, acc.to(DW.dtype.element_ty), mask=(ro < D)[:, None] & (ri < D)[None, :])
    if pid_i == 0:
        tl.store(DB + lm * D + ro, db.to(DB.dtype.element_ty), mask=ro < D)


# ---- host side ----------------------------------------------------------------------------------


@on_input_device
def cross_forward(x0, weight, bias, save=True, gather=None):
    """Runs the forward kernel. ``gather`` = (table, indices, offsets) fuses the lookup: x0 is
    then an empty buffer the kernel fills. Returns (out, states); the states x_1..x_{L-1} are
    kept whatever ``save`` says: the kernel works in them."""
    layers, m, d, _ = weight.shape
    b = x0.shape[0]
    states = x0.new_empty((max(layers - 1, 0), b, m, d))
    if layers == 0 or x0.numel() == 0:
        if gather is not None and x0.numel():
            x0.copy_(lookup_forward(*gather).reshape(x0.shape))
        return x0.clone(), states
    out = torch.empty_like(x0)
    if gather is None:
        table, indices, offsets, n, k, rows = x0, x0, x0, 1, 1, 1  # unused pointers
    else:
        table, indices, offsets = gather
        n, k, rows = indices.shape[1], table.shape[2], table.shape[0]
    _cross_fwd_kernel[lambda cfg: (triton.cdiv(b, cfg["BLOCK_B"]), m)](
        x0,
        weight,
        bias,
        states if layers > 1 else x0,
        out,
        table,
        indices,
        offsets,
        b,
        m,
        d,
        layers,
        n,
        k,
        rows,
        GATHER=gather is not None,
        **dot_meta(x0.dtype),
    )
    return out, states


def lookup_cross_forward(table, indices, offsets, weight, bias, save=True):
    b, n = indices.shape
    _, m, k = table.shape
    x0 = table.new_empty((b, m, n * k))
    out, states = cross_forward(x0, weight, bias, save, gather=(table, indices, offsets))
    return out, x0, states


@on_input_device
def cross_backward(grad, x0, weight, bias, states):
    """Gradients (x0, weight, bias) of the cross network given the saved states."""
    layers, m, d, _ = weight.shape
    b = x0.shape[0]
    acc = acc_dtype(x0.dtype)
    dweight = torch.zeros_like(weight)
    dbias = torch.zeros_like(bias)
    if layers == 0 or x0.numel() == 0:
        return grad.clone(), dweight, dbias
    u = x0.new_empty((layers, b, m, d))
    gbuf = torch.empty((2 if layers > 1 else 0, b, m, d), dtype=acc, device=x0.device)
    dx0 = torch.empty((b, m, d), dtype=acc, device=x0.device)
    meta = dot_meta(x0.dtype)
    states_arg = states if layers > 1 else x0
    _cross_bwd_kernel[lambda cfg: (triton.cdiv(b, cfg["BLOCK_B"]), m)](
        x0,
        weight,
        bias,
        states_arg,
        grad,
        u,
        gbuf if layers > 1 else dx0,
        dx0,
        b,
        m,
        d,
        layers,
        **meta,
    )

    def wgrad_grid(cfg):
        return triton.cdiv(d, cfg["BLOCK_O"]) * triton.cdiv(d, cfg["BLOCK_I"]), layers * m

    _cross_wgrad_kernel[wgrad_grid](u, x0, states_arg, dweight, dbias, b, m, d, **meta)
    return dx0.to(x0.dtype), dweight, dbias
