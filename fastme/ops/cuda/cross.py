"""Per-set DCNv2 cross network on the CUDA kernels (kernels/cross.cu).

One batched GEMM launch per layer with the layer update fused into its epilogue; bf16/fp16 and
(when torch allows TF32) float32 on tensor cores with float32 accumulation, float64 and exact
float32 on FMA units. With autograd recording, the forward keeps x_1..x_{L-1} and
z_l = W_l x_l + b_l for the backward (the same tensors eager autograd keeps), as one ``states``
tensor: planes [0, L-1) are the x_l, planes [L-1, 2L-1) the z_l. Without, it keeps one scratch
plane and no z_l.
"""

import torch

from fastme._extension import require_cuda_kernels
from fastme.ops._policy import acc_dtype, tf32_allowed
from fastme.ops.cuda import BACKEND, _lib
from fastme.ops.cuda.lookup import lookup_forward


def _split_states(states: torch.Tensor, layers: int, save: bool):
    """(xs, zs) views of ``states`` as the kernels address them."""
    xs_planes = max(layers - 1, 0) if save else states.shape[0]
    return states[:xs_planes], states[xs_planes:]


def cross_forward(x0, weight, bias, save):
    layers = weight.shape[0]
    batch, sets, dim = x0.shape
    states = x0.new_empty((BACKEND.cross_states(layers, save), *x0.shape))
    if layers == 0 or x0.numel() == 0:
        return x0.clone(), states
    xs, zs = _split_states(states, layers, save)
    out = torch.empty_like(x0)
    require_cuda_kernels().cross_forward(
        x0=x0.data_ptr(),
        weight=weight.data_ptr(),
        bias=bias.data_ptr(),
        batch=batch,
        num_sets=sets,
        dim=dim,
        layers=layers,
        out=out.data_ptr(),
        xs=xs.data_ptr(),
        zs=zs.data_ptr(),
        save=save,
        allow_tf32=tf32_allowed(),
        **_lib.launch(x0),
    )
    return out, states


def lookup_cross_forward(table, indices, offsets, weight, bias, save):
    """The lookup writes x_0, then the cross network runs (no fused kernel)."""
    (b, n), (_, m, k) = indices.shape, table.shape
    x0 = lookup_forward(table, indices, offsets).reshape(b, m, n * k)
    out, states = cross_forward(x0, weight, bias, save)
    return out, x0, states


def cross_backward(grad, x0, weight, bias, states):
    layers, sets, dim, _ = weight.shape
    batch = x0.shape[0]
    if layers == 0:
        return grad.clone(), torch.zeros_like(weight), torch.zeros_like(bias)
    if x0.numel() == 0:
        return torch.zeros_like(x0), torch.zeros_like(weight), torch.zeros_like(bias)
    xs, zs = _split_states(states, layers, save=True)
    lib = require_cuda_kernels()
    acc = acc_dtype(x0.dtype)
    plan = lib.cross_weight_grad_plan(batch=batch, num_sets=sets, dim=dim, device=x0.device.index)
    splits = plan[0]  # batch slices of the weight gradient
    grad_x0 = torch.empty_like(x0)
    grad_weight = torch.empty_like(weight)
    grad_bias = torch.empty_like(bias)
    h = torch.empty_like(x0)
    g = torch.empty_like(x0) if layers > 1 else h  # dL/dx_l for 0 < l < L; unused when L == 1
    dx0 = torch.empty(x0.shape, dtype=acc, device=x0.device)
    w_partial = torch.empty((sets * splits, dim, dim), dtype=acc, device=x0.device)
    b_partial = torch.empty((sets * splits, dim), dtype=acc, device=x0.device)
    lib.cross_backward(
        grad_out=grad.data_ptr(),
        x0=x0.data_ptr(),
        weight=weight.data_ptr(),
        xs=xs.data_ptr(),
        zs=zs.data_ptr(),
        batch=batch,
        num_sets=sets,
        dim=dim,
        layers=layers,
        grad_x0=grad_x0.data_ptr(),
        grad_weight=grad_weight.data_ptr(),
        grad_bias=grad_bias.data_ptr(),
        h=h.data_ptr(),
        g=g.data_ptr(),
        dx0=dx0.data_ptr(),
        w_partial=w_partial.data_ptr(),
        b_partial=b_partial.data_ptr(),
        plan=plan,
        allow_tf32=tf32_allowed(),
        **_lib.launch(x0),
    )
    return grad_x0, grad_weight, grad_bias
