"""Per-set full-rank DCNv2 cross network, alone and fused with the lookup at its front."""

from __future__ import annotations

import torch

from fastme.ops import _backend, reference
from fastme.ops._kernel_ops import BackendOps, needs_grad
from fastme.ops._policy import autocast_dtype, autocast_matmul_inputs
from fastme.ops._validation import (
    FLOAT_DTYPES,
    check_same_dtype,
    check_shape,
    check_tensor,
    prepare_lookup,
)


def _check_cross_params(weight, bias, num_sets, dim, like, like_name):
    check_tensor(weight, "weight", ndim=4, dtypes=FLOAT_DTYPES, device=like.device)
    layers = weight.shape[0]
    check_shape(weight, "weight", (layers, num_sets, dim, dim))
    check_tensor(bias, "bias", ndim=3, dtypes=FLOAT_DTYPES, device=like.device)
    check_shape(bias, "bias", (layers, num_sets, dim))
    check_same_dtype(weight, "weight", like, like_name)
    check_same_dtype(bias, "bias", like, like_name)


def cross_network(
    x0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """x_{l+1} = x_0 ⊙ (W_l^(m) x_l + b_l^(m)) + x_l for all L layers and M sets.

    x0 [B, M, D], weight [L, M, D, D], bias [L, M, D] -> [B, M, D].
    """
    check_tensor(x0, "x0", ndim=3, dtypes=FLOAT_DTYPES)
    _check_cross_params(weight, bias, x0.shape[1], x0.shape[2], x0, "x0")
    fn = _backend.resolve("cross_network", backend, x0.device)
    return fn(x0, weight, bias)


def lookup_cross_network(
    table: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    field_dims: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Lookup fused at the front of the cross network: x_0 gathered from the table per set.

    table [rows, M, K], indices [B, N], weight [L, M, N*K, N*K], bias [L, M, N*K] -> [B, M, N*K].
    """
    indices, _ = prepare_lookup(table, indices, offsets, field_dims)
    _check_cross_params(
        weight, bias, table.shape[1], indices.shape[1] * table.shape[2], table, "table"
    )
    fn = _backend.resolve("lookup_cross_network", backend, table.device)
    return fn(table, indices, offsets, weight, bias)


_backend.register("cross_network", "reference")(reference.cross_network)
_backend.register("lookup_cross_network", "reference")(reference.lookup_cross_network)


def kernel_ops(kernels: BackendOps) -> dict:
    """One backend's cross-network custom ops and the public ops they implement. Needs the
    lookup's backward op (fastme/ops/embedding_lookup.py) for the fused lookup's gradient."""
    planes = kernels.backend.cross_states

    def states_fake(x0, layers, save):
        return x0.new_empty((planes(layers, save), *x0.shape))

    def lookup_cross_fake(table, indices, offsets, weight, bias, save):
        # x_0 in the weights' dtype: the table's, except under autocast (mixed_lookup_cross)
        x0 = weight.new_empty((indices.shape[0], table.shape[1], indices.shape[1] * table.shape[2]))
        return torch.empty_like(x0), torch.empty_like(x0), states_fake(x0, weight.shape[0], save)

    cross = kernels.define(  # returns (x_L, states); the states only feed the backward
        "cross_network",
        "(Tensor x0, Tensor weight, Tensor bias, bool save) -> (Tensor, Tensor)",
        lambda x0, weight, bias, save: (
            torch.empty_like(x0),
            states_fake(x0, weight.shape[0], save),
        ),
    )
    cross_backward = kernels.define(
        "cross_network_backward",
        "(Tensor grad, Tensor x0, Tensor weight, Tensor bias, "
        "Tensor states) -> (Tensor, Tensor, Tensor)",
        lambda grad, x0, weight, bias, states: (
            torch.empty_like(x0),
            torch.empty_like(weight),
            torch.empty_like(bias),
        ),
    )
    lookup_cross = kernels.define(  # returns (x_L, the gathered x_0, states)
        "lookup_cross_network",
        "(Tensor table, Tensor indices, Tensor offsets, Tensor weight, "
        "Tensor bias, bool save) -> (Tensor, Tensor, Tensor)",
        lookup_cross_fake,
        gathers=True,
    )
    lookup_backward = kernels.defined.get("multi_embedding_lookup_backward")
    if cross is None or cross_backward is None:
        return {}
    name = kernels.backend.name

    def saved_or_raise(ctx):
        if not ctx.saved:
            raise RuntimeError(
                f"fastme {name} cross network: the forward ran without saving "
                "activations (save=False) but a gradient was requested"
            )
        return ctx.saved_tensors

    def cross_setup(ctx, inputs, output):
        x0, weight, bias, save = inputs
        ctx.saved = save
        if save:
            ctx.save_for_backward(x0, weight, bias, output[1])
        ctx.mark_non_differentiable(output[1])
        # no zero-filled gradient for the states ((2L-1) x the activations; ~20% of a CPU step)
        ctx.set_materialize_grads(False)

    def cross_grad(ctx, grad, _grad_states):
        x0, weight, bias, states = saved_or_raise(ctx)
        if grad is None:  # only the states' (None) gradient was asked for
            grad = torch.zeros_like(x0)
        return (*cross_backward(grad, x0, weight, bias, states), None)

    cross.register_autograd(cross_grad, setup_context=cross_setup)

    def cross_network(x0, weight, bias):
        x0, weight, bias = autocast_matmul_inputs(x0, weight, bias)
        return cross(x0, weight, bias, needs_grad(x0, weight, bias))[0]

    implemented = {"cross_network": cross_network}
    lookup = kernels.defined.get("multi_embedding_lookup")
    if lookup_cross is None and lookup is not None:  # the backend's lookup, then its cross
        implemented["lookup_cross_network"] = lambda table, indices, offsets, weight, bias: (
            implemented["cross_network"](
                lookup(table, indices, offsets).reshape(indices.shape[0], table.shape[1], -1),
                weight,
                bias,
            )
        )
    if lookup_cross is None or lookup_backward is None:
        return implemented

    def lookup_cross_setup(ctx, inputs, output):
        table, indices, offsets, weight, bias, save = inputs
        ctx.saved = save
        if save:
            ctx.save_for_backward(indices, offsets, weight, bias, output[1], output[2])
        ctx.num_rows, ctx.row_shape = table.shape[0], table.shape[1:]
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.set_materialize_grads(False)

    def lookup_cross_grad(ctx, grad, _grad_x0, _grad_states):
        indices, offsets, weight, bias, x0, states = saved_or_raise(ctx)
        if grad is None:
            grad = torch.zeros_like(x0)
        dx0, dweight, dbias = cross_backward(grad, x0, weight, bias, states)
        dtable = None
        if ctx.needs_input_grad[0]:
            b, n = indices.shape
            emb_grad = dx0.reshape(b, ctx.row_shape[0], n, ctx.row_shape[1])  # [B, M, N, K]
            dtable = lookup_backward(emb_grad, indices, offsets, ctx.num_rows)
        return dtable, None, None, dweight, dbias, None

    lookup_cross.register_autograd(lookup_cross_grad, setup_context=lookup_cross_setup)

    def lookup_cross_network(table, indices, offsets, weight, bias):
        if autocast_dtype(table.device.type) is not None:
            if kernels.backend.mixed_lookup_cross and not needs_grad(table, weight, bias):
                weight, bias = autocast_matmul_inputs(weight, bias)
                return lookup_cross(table, indices, offsets, weight, bias, False)[0]
            # the table stays as it is (float32): gather, then the GEMMs in the autocast dtype
            gather = lookup or reference.multi_embedding_lookup
            x0 = gather(table, indices, offsets).reshape(indices.shape[0], table.shape[1], -1)
            return cross_network(x0, weight, bias)
        save = needs_grad(table, weight, bias)
        return lookup_cross(table, indices, offsets, weight, bias, save)[0]

    implemented["lookup_cross_network"] = lookup_cross_network
    return implemented
