"""Per-set DCNv2 cross network on the CUDA kernels (kernels/cross.cu), alone and behind the lookup.

One batched GEMM launch per layer with the layer update fused into its epilogue; bf16/fp16 and
(when torch allows TF32) float32 on tensor cores with float32 accumulation, float64 and exact
float32 on FMA units. With autograd recording, the forward keeps x_1..x_{L-1} and
z_l = W_l x_l + b_l for the backward (the same tensors eager autograd keeps).
"""

import torch

from fastme.ops.cuda import _lib
from fastme.ops.cuda.lookup import lookup_op


def _saved_shapes(x0: torch.Tensor, layers: int, save: bool):
    """Shapes of (xs, zs): the saved activations, or one scratch plane and nothing."""
    plane = tuple(x0.shape)
    if save:
        return (max(layers - 1, 0), *plane), (layers, *plane)
    return (1 if layers >= 2 else 0, *plane), (0, *plane)


@torch.library.custom_op("fastme::cuda_cross_network", mutates_args=(), device_types="cuda")
def cross_op(x0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x0, weight, bias = x0.contiguous(), weight.contiguous(), bias.contiguous()
    layers = weight.shape[0]
    batch, sets, dim = x0.shape
    xs_shape, zs_shape = _saved_shapes(x0, layers, save)
    xs = x0.new_empty(xs_shape)
    zs = x0.new_empty(zs_shape)
    if layers == 0 or x0.numel() == 0:
        return x0.clone(), xs, zs
    out = torch.empty_like(x0)
    _lib.ext().cross_forward(x0=x0.data_ptr(), weight=weight.data_ptr(), bias=bias.data_ptr(),
                             batch=batch, num_sets=sets, dim=dim, layers=layers,
                             out=out.data_ptr(), xs=xs.data_ptr(), zs=zs.data_ptr(), save=save,
                             allow_tf32=_lib.allow_tf32(), **_lib.launch(x0))
    return out, xs, zs


@cross_op.register_fake
def _(x0, weight, bias, save):
    xs_shape, zs_shape = _saved_shapes(x0, weight.shape[0], save)
    return torch.empty_like(x0), x0.new_empty(xs_shape), x0.new_empty(zs_shape)


@torch.library.custom_op("fastme::cuda_cross_network_backward", mutates_args=(),
                         device_types="cuda")
def cross_backward_op(grad: torch.Tensor, x0: torch.Tensor, weight: torch.Tensor,
                      xs: torch.Tensor, zs: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad, x0, weight = grad.contiguous(), x0.contiguous(), weight.contiguous()
    xs, zs = xs.contiguous(), zs.contiguous()
    layers, sets, dim, _ = weight.shape
    batch = x0.shape[0]
    if layers == 0:
        return grad.clone(), torch.zeros_like(weight), weight.new_zeros((0, sets, dim))
    if x0.numel() == 0:
        return (torch.zeros_like(x0), torch.zeros_like(weight),
                weight.new_zeros((layers, sets, dim)))
    lib = _lib.ext()
    acc = _lib.acc_dtype(x0.dtype)
    splits, per_split = lib.cross_weight_grad_plan(batch=batch, num_sets=sets, dim=dim,
                                                   device=x0.device.index)
    grad_x0 = torch.empty_like(x0)
    grad_weight = torch.empty_like(weight)
    grad_bias = weight.new_empty((layers, sets, dim))
    h = torch.empty_like(x0)
    g = torch.empty_like(x0) if layers > 1 else h  # dL/dx_l for 0 < l < L; unused when L == 1
    dx0 = torch.empty(x0.shape, dtype=acc, device=x0.device)
    w_partial = torch.empty((sets * splits, dim, dim), dtype=acc, device=x0.device)
    b_partial = torch.empty((sets * splits, dim), dtype=acc, device=x0.device)
    lib.cross_backward(grad_out=grad.data_ptr(), x0=x0.data_ptr(), weight=weight.data_ptr(),
                       xs=xs.data_ptr(), zs=zs.data_ptr(), batch=batch, num_sets=sets, dim=dim,
                       layers=layers, grad_x0=grad_x0.data_ptr(),
                       grad_weight=grad_weight.data_ptr(), grad_bias=grad_bias.data_ptr(),
                       h=h.data_ptr(), g=g.data_ptr(), dx0=dx0.data_ptr(),
                       w_partial=w_partial.data_ptr(), b_partial=b_partial.data_ptr(),
                       splits=splits, depth_per_split=per_split, allow_tf32=_lib.allow_tf32(),
                       **_lib.launch(x0))
    return grad_x0, grad_weight, grad_bias


@cross_backward_op.register_fake
def _(grad, x0, weight, xs, zs):
    return torch.empty_like(x0), torch.empty_like(weight), weight.new_empty(weight.shape[:3])


def _setup_context(ctx, inputs, output):
    x0, weight, _, save = inputs
    _, xs, zs = output
    if save:
        ctx.save_for_backward(x0, weight, xs, zs)
    ctx.saved = save
    ctx.mark_non_differentiable(xs, zs)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad, _grad_xs, _grad_zs):
    if grad is None:
        return None, None, None, None
    if not ctx.saved:
        raise RuntimeError("fastme cuda cross network: the forward ran without saving "
                           "activations (save=False) but a gradient was requested")
    x0, weight, xs, zs = ctx.saved_tensors
    grad_x0, grad_weight, grad_bias = cross_backward_op(grad, x0, weight, xs, zs)
    return grad_x0, grad_weight, grad_bias, None


cross_op.register_autograd(_backward, setup_context=_setup_context)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def cross_network(x0, weight, bias):
    """Backend implementation registered as ("cross_network", "cuda")."""
    # One element type inside the kernels; the casts stay visible to autograd.
    weight, bias = weight.to(x0.dtype), bias.to(x0.dtype)
    out, _, _ = cross_op(x0, weight, bias, _needs_grad(x0, weight, bias))
    return out


def lookup_cross_network(table, indices, offsets, weight, bias):
    """Backend implementation registered as ("lookup_cross_network", "cuda"): the lookup kernel
    writes x_0 once (it is needed by every layer and by the backward), then the cross network."""
    b, n = indices.shape
    _, m, k = table.shape
    x0 = lookup_op(table, indices, offsets).reshape(b, m, n * k)
    return cross_network(x0, weight, bias)
