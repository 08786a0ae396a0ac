"""Grouped multi-set embedding lookup: one gather for all fields and all sets."""

from __future__ import annotations

import torch

from fastme.ops import _backend, reference
from fastme.ops._validation import (apply_bounds_check, check_lookup_inputs,
                                    field_dims_from_offsets)


def prepare_lookup(table, indices, offsets, field_dims):
    """Shared validation of every lookup-based op; returns (indices, field_dims) after the
    bounds check (indices may come back clamped in 'clamp' mode)."""
    check_lookup_inputs(table, indices, offsets, field_dims)
    if field_dims is None:
        field_dims = field_dims_from_offsets(offsets, table.shape[0])
    return apply_bounds_check(indices, field_dims), field_dims


def multi_embedding_lookup(table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, *,
                           field_dims: torch.Tensor | None = None,
                           backend: str = "auto") -> torch.Tensor:
    """Gather every field's row of every embedding set.

    Args:
        table: [rows, M, K] float table; row ``offsets[i] + indices[b, i]`` holds the M sets of
            field i's value.
        indices: [B, N] int32/int64 per-field local indices.
        offsets: [N] exclusive cumsum of the field cardinalities.
        field_dims: [N] cardinalities used for the bounds check (default: implied by offsets and
            the table's row count).
        backend: "auto", "reference", "triton" or "cuda".

    Returns:
        [B, M, N, K] embeddings, differentiable with respect to ``table``.
    """
    indices, field_dims = prepare_lookup(table, indices, offsets, field_dims)
    fn = _backend.resolve("multi_embedding_lookup", backend, table.device)
    return fn(table, indices, offsets)


def register_kernel_autograd(lookup_op, lookup_backward_op) -> None:
    """Fake (meta) implementations and autograd for a kernel backend's pair of custom ops:
    ``lookup_op(table, indices, offsets) -> [B, M, N, K]`` and
    ``lookup_backward_op(grad, indices, offsets, num_rows) -> [rows, M, K]`` (the dense table
    gradient, duplicates summed). Every backend shares this wiring; only the kernels differ."""

    @lookup_op.register_fake
    def _(table, indices, offsets):
        return table.new_empty((indices.shape[0], table.shape[1], indices.shape[1], table.shape[2]))

    @lookup_backward_op.register_fake
    def _(grad, indices, offsets, num_rows):
        return grad.new_empty((num_rows, grad.shape[1], grad.shape[3]))

    def setup_context(ctx, inputs, output):
        table, indices, offsets = inputs
        ctx.save_for_backward(indices, offsets)
        ctx.num_rows = table.shape[0]

    def backward(ctx, grad):
        indices, offsets = ctx.saved_tensors
        return lookup_backward_op(grad, indices, offsets, ctx.num_rows), None, None

    lookup_op.register_autograd(backward, setup_context=setup_context)


_backend.register("multi_embedding_lookup", "reference")(reference.multi_embedding_lookup)
