"""FM and field-weighted (FwFM) pooling, alone and fused with the lookup."""

from __future__ import annotations

import torch

from fastme.ops import _backend, reference
from fastme.ops._kernel_ops import BackendOps
from fastme.ops._policy import autocast_widest_inputs
from fastme.ops._validation import (
    FLOAT_DTYPES,
    check_same_dtype,
    check_shape,
    check_tensor,
    prepare_lookup,
)


def _check_field_weights(field_weights, num_sets, num_fields, like, like_name):
    check_tensor(field_weights, "field_weights", ndim=3, dtypes=FLOAT_DTYPES, device=like.device)
    check_shape(field_weights, "field_weights", (num_sets, num_fields, num_fields))
    check_same_dtype(field_weights, "field_weights", like, like_name)


def fm_pooling(emb: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """0.5 * ((sum_i e_i)^2 - sum_i e_i^2) per set: [B, M, N, K] -> [B, M, K].

    For embeddings gathered elsewhere (e.g. by a sharded embedding collection); kernel backends
    run the fused pooled-lookup kernels over ``emb`` (one transposing copy of it).
    """
    check_tensor(emb, "emb", ndim=4, dtypes=FLOAT_DTYPES)
    return _backend.resolve("fm_pooling", backend, emb.device)(emb)


def fwfm_pooling(
    emb: torch.Tensor, field_weights: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """sum_{i,j} r_ij e_i ⊙ e_j per set (diagonal included): [B, M, N, K] -> [B, M, K], with the
    [M, N, N] matrix; differentiable in both. Backends as for :func:`fm_pooling`."""
    check_tensor(emb, "emb", ndim=4, dtypes=FLOAT_DTYPES)
    _check_field_weights(field_weights, emb.shape[1], emb.shape[2], emb, "embeddings")
    return _backend.resolve("fwfm_pooling", backend, emb.device)(emb, field_weights)


def pooled_lookup(
    table: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    field_weights: torch.Tensor | None = None,
    *,
    field_dims: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused lookup + pooling: [rows, M, K] table, [B, N] indices -> [B, M, K].

    FM pooling when ``field_weights`` is None, else field-weighted pooling with the [M, N, N]
    matrix (all ordered pairs, diagonal included). Fused backends never materialise [B, M, N, K].
    """
    indices, _ = prepare_lookup(table, indices, offsets, field_dims)
    if field_weights is not None:
        _check_field_weights(field_weights, table.shape[1], indices.shape[1], table, "table")
    fn = _backend.resolve("pooled_lookup", backend, table.device)
    return fn(table, indices, offsets, field_weights)


_backend.register("pooled_lookup", "reference")(reference.pooled_lookup)
_backend.register("fm_pooling", "reference")(reference.fm_pooling)
_backend.register("fwfm_pooling", "reference")(reference.fwfm_pooling)


def _as_lookup(emb):
    """Already-gathered embeddings [B, M, N, K] as a lookup of distinct rows, so that the fused
    pooled-lookup kernels pool them: row b*N + i of the [B*N, M, K] table is e_{b,i}, and the
    table gradient is the gradient of ``emb`` (reached through the copy)."""
    b, m, n, k = emb.shape
    table = emb.transpose(1, 2).reshape(b * n, m, k)
    indices = (torch.arange(b, device=emb.device) * n).unsqueeze(1).expand(b, n)
    return table, indices, torch.arange(n, device=emb.device)


def _pooled_fake(table, indices, offsets, *rest):
    return table.new_empty((indices.shape[0], table.shape[1], table.shape[2]))


def kernel_ops(kernels: BackendOps) -> dict:
    """One backend's FM and FwFM custom ops and the public ops they implement."""
    fm = kernels.define(
        "fm_pooled_lookup",
        "(Tensor table, Tensor indices, Tensor offsets) -> Tensor",
        _pooled_fake,
        gathers=True,
    )
    fm_backward = kernels.define(
        "fm_pooled_lookup_backward",
        "(Tensor grad, Tensor table, Tensor indices, Tensor offsets) -> Tensor",
        lambda grad, table, indices, offsets: torch.empty_like(table),
    )
    fwfm = kernels.define(
        "fwfm_pooled_lookup",
        "(Tensor table, Tensor indices, Tensor offsets, Tensor field_weights) -> Tensor",
        _pooled_fake,
        gathers=True,
    )
    fwfm_backward = kernels.define(
        "fwfm_pooled_lookup_backward",
        "(Tensor grad, Tensor table, Tensor indices, "
        "Tensor offsets, Tensor field_weights) -> (Tensor, Tensor)",
        lambda grad, table, indices, offsets, weights: (
            torch.empty_like(table),
            torch.empty_like(weights),
        ),
    )
    implemented = {}

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    if fm is not None and fm_backward is not None:

        def fm_grad(ctx, grad):
            table, indices, offsets = ctx.saved_tensors
            dtable = fm_backward(grad, table, indices, offsets) if ctx.needs_input_grad[0] else None
            return dtable, None, None

        fm.register_autograd(fm_grad, setup_context=setup_context)
        implemented["fm_pooling"] = lambda emb: fm(*_as_lookup(emb))
    if fwfm is not None and fwfm_backward is not None:

        def fwfm_grad(ctx, grad):
            table, indices, offsets, field_weights = ctx.saved_tensors
            if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[3]):
                return None, None, None, None
            dtable, dweights = fwfm_backward(grad, table, indices, offsets, field_weights)
            return dtable, None, None, dweights

        fwfm.register_autograd(fwfm_grad, setup_context=setup_context)

        def fwfm_pooling(emb, field_weights):
            emb, field_weights = autocast_widest_inputs(emb, field_weights)
            return fwfm(*_as_lookup(emb), field_weights)

        implemented["fwfm_pooling"] = fwfm_pooling
    if len(implemented) == 2:

        def pooled(table, indices, offsets, field_weights=None):
            if field_weights is None:
                return fm(table, indices, offsets)
            table, field_weights = autocast_widest_inputs(table, field_weights)
            return fwfm(table, indices, offsets, field_weights)

        implemented["pooled_lookup"] = pooled
    return implemented
