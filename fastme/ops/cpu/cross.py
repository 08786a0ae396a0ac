"""Per-set DCNv2 cross network on the CPU: torch's GEMMs (oneDNN / MKL; bfloat16 on the matrix
units where the CPU has them) between fused elementwise passes (kernels/cpu/cross.cpp).

The sets are the batch of one ``bmm`` per layer on an [M, B, D] layout: z_l = x_l W_l^T (no
einsum, no bias in the GEMM), then one pass writes x_{l+1} = x_0 * (z_l + b_l) + x_l. The passes
read and write rows by (set, sample) with strides, so x_0 is read in its [B, M, D] layout and x_L
written straight into it: no transposing copy. With autograd recording, the forward keeps
x_1..x_{L-1} and z_0..z_{L-1} ([M, B, D] planes of ``states``, like the CUDA backend's). The
backward per layer, from the last: one pass takes the output gradient G (the previous layer's
G + u W, summed on the fly), writes u = G * x_0 (the GEMMs' input), adds G * (z + b) into an x_0
gradient kept in the accumulation dtype and sums the bias gradient over fixed ranges of samples
(deterministic); then dW = u^T x_l and u W are two more ``bmm``.
"""

import threading

import torch

from fastme._extension import require_cpu_kernels
from fastme.ops._policy import acc_dtype
from fastme.ops.cpu import BACKEND, _lib
from fastme.ops.cpu.lookup import lookup_forward, lookup_forward_to


def _planes(states: torch.Tensor, batch: int, sets: int, dim: int) -> torch.Tensor:
    """The states as [S, M, B, D] planes (the fake's [S, B, M, D] is only their size)."""
    return states.view(states.shape[0], sets, batch, dim)


def _bmd(t: torch.Tensor) -> dict:
    """Strides of a [B, M, D] tensor's rows by (set, sample)."""
    return {"sm": t.stride(1), "sb": t.stride(0)}


def _run(t):
    args = _lib.run_args(t)
    return {"threads": args["threads"], "dtype": args["dtype"]}


# Without saved states (inference) the batch runs in chunks of samples whose scratch buffers (z
# and x_l) hold at most this many bytes each, kept between calls (_scratch).
_SCRATCH_BYTES = 16 << 20
_THREAD = threading.local()


def _scratch(name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A buffer of ``numel`` elements kept between calls, one per name, dtype and Python thread
    (two threads may run inference at once). Buffers of megabytes allocated afresh per call are
    handed back to the OS when freed and page-faulted in again on the next one: ~6,000 faults,
    ~20% of an ME-DCNv2 x4 bf16 inference at B=4096 on 2 cores."""
    buffers = _THREAD.__dict__.setdefault("cross_scratch", {})
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: written in and out of that mode
            buffer = buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]


def cross_forward(x0, weight, bias, save):
    layers = weight.shape[0]
    batch, sets, dim = x0.shape
    states = x0.new_empty((BACKEND.cross_states(layers, save), *x0.shape))
    if layers == 0 or x0.numel() == 0:
        return x0.clone(), states
    out = torch.empty_like(x0)
    wt = weight.transpose(2, 3)  # z = x W^T
    if save:
        planes = _planes(states, batch, sets, dim)
        _layers(x0, wt, bias, out, planes[layers - 1 :], planes[: layers - 1])
        return out, states
    # z and x_l: one scratch buffer each, x_l updated in place; chunks of samples (a function of
    # the shapes only: the same results for every thread count)
    chunks = -(-sets * batch * dim * x0.element_size() // _SCRATCH_BYTES)
    rows = -(-batch // max(chunks, 1))
    scratch_z = _scratch("z", sets * rows * dim, x0.dtype)
    scratch_x = _scratch("x", sets * rows * dim, x0.dtype) if layers > 1 else None
    for start in range(0, batch, rows):
        n = min(rows, batch - start)
        z = scratch_z[: sets * n * dim].view(sets, n, dim)
        x = None if scratch_x is None else scratch_x[: sets * n * dim].view(sets, n, dim)
        end = start + n
        _layers(x0[start:end], wt, bias, out[start:end], [z] * layers, [x] * (layers - 1))
    return out, states


def _layers(x0, wt, bias, out, zs, xs):
    """Every layer on the samples of x0 [B, M, D] (a view), x_L into out [B, M, D]: z_l into
    zs[l] and x_{l+1} into xs[l] ([M, B, D] buffers, which may be one buffer for every layer)."""
    lib = require_cpu_kernels()
    layers = wt.shape[0]
    batch, sets, dim = x0.shape
    x, x_strides = x0.transpose(0, 1), _bmd(x0)
    for layer in range(layers):
        z = zs[layer]
        if layer == 0:  # x0 strided: per-set mm packs it faster than bmm (bf16: 4.9 vs 6.3 ms)
            for m in range(sets):
                torch.mm(x0[:, m], wt[0, m], out=z[m])
        else:
            torch.bmm(x, wt[layer], out=z)
        if layer == layers - 1:
            dst, dst_strides = out, _bmd(out)
        else:
            dst = xs[layer]
            dst_strides = {"sm": dst.stride(0), "sb": dst.stride(1)}  # [M, B, D]
        lib.cpu_cross_layer_forward(
            **_run(x0),
            num_sets=sets,
            batch=batch,
            dim=dim,
            x0=x0.data_ptr(),
            x0_sm=x0.stride(1),
            x0_sb=x0.stride(0),
            z=z.data_ptr(),
            x=x.data_ptr(),
            x_sm=x_strides["sm"],
            x_sb=x_strides["sb"],
            bias=bias[layer].data_ptr(),
            out=dst.data_ptr(),
            out_sm=dst_strides["sm"],
            out_sb=dst_strides["sb"],
        )
        x, x_strides = dst, dst_strides


def lookup_cross_forward(table, indices, offsets, weight, bias, save):
    """The lookup writes x_0 (in the weights' dtype: bfloat16 or float16 weights with a float32
    table, under autocast, are gathered straight into it), then the cross network runs."""
    (b, n), (_, m, k) = indices.shape, table.shape
    if weight.dtype == table.dtype:
        x0 = lookup_forward(table, indices, offsets)
    elif table.dtype == torch.float32 and weight.dtype in (torch.bfloat16, torch.float16):
        x0 = lookup_forward_to(table, indices, offsets, weight.dtype)
    else:
        x0 = lookup_forward(table, indices, offsets).to(weight.dtype)
    x0 = x0.reshape(b, m, n * k)
    out, states = cross_forward(x0, weight, bias, save)
    return out, x0, states


def cross_backward(grad, x0, weight, bias, states):
    layers, sets, dim, _ = weight.shape
    batch = x0.shape[0]
    if layers == 0:
        return grad.clone(), torch.zeros_like(weight), torch.zeros_like(bias)
    if x0.numel() == 0:
        return torch.zeros_like(x0), torch.zeros_like(weight), torch.zeros_like(bias)
    lib = require_cpu_kernels()
    planes = _planes(states, batch, sets, dim)
    xs, zs = planes[: layers - 1], planes[layers - 1 :]
    grad_weight = torch.empty_like(weight)
    grad_bias = torch.empty_like(bias)
    dx0 = torch.empty((sets, batch, dim), dtype=acc_dtype(x0.dtype))
    u = torch.empty((sets, batch, dim), dtype=x0.dtype)
    h = torch.empty_like(u)  # u W of the layer after
    g_chain = torch.empty_like(u) if layers > 1 else None  # G of the layer after
    g, g_strides, h_ptr = grad, _bmd(grad), 0
    mbd = {"sm": batch * dim, "sb": dim}
    for layer in reversed(range(layers)):
        lib.cpu_cross_layer_backward(
            **_run(x0),
            num_sets=sets,
            batch=batch,
            dim=dim,
            g=g.data_ptr(),
            g_sm=g_strides["sm"],
            g_sb=g_strides["sb"],
            h=h_ptr,
            g_out=g_chain.data_ptr() if h_ptr else 0,
            x0=x0.data_ptr(),
            x0_sm=x0.stride(1),
            x0_sb=x0.stride(0),
            z=zs[layer].data_ptr(),
            bias=bias[layer].data_ptr(),
            u=u.data_ptr(),
            dx0_acc=dx0.data_ptr(),
            accumulate=layer < layers - 1,
            grad_bias=grad_bias[layer].data_ptr(),
        )
        if h_ptr:  # G was written to g_chain
            g, g_strides = g_chain, mbd
        x = x0.transpose(0, 1) if layer == 0 else xs[layer - 1]
        torch.bmm(u.transpose(1, 2), x, out=grad_weight[layer])
        torch.bmm(u, weight[layer], out=h)
        h_ptr = h.data_ptr()
    grad_x0 = torch.empty_like(x0)
    lib.cpu_cross_grad_x0(
        **_run(x0),
        num_sets=sets,
        batch=batch,
        dim=dim,
        dx0_acc=dx0.data_ptr(),
        g=g.data_ptr(),
        g_sm=g_strides["sm"],
        g_sb=g_strides["sb"],
        h=h.data_ptr(),
        grad_x0=grad_x0.data_ptr(),
        gx_sm=grad_x0.stride(1),
        gx_sb=grad_x0.stride(0),
    )
    return grad_x0, grad_weight, grad_bias
