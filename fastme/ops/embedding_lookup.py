"""Grouped multi-set embedding lookup: one gather for all fields and all sets."""

from __future__ import annotations

import torch

from fastme.ops import _backend, reference
from fastme.ops._kernel_ops import BackendOps
from fastme.ops._validation import prepare_lookup


def multi_embedding_lookup(
    table: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    *,
    field_dims: torch.Tensor | None = None,
    backend: str = "auto",
    sparse_grad: bool = False,
) -> torch.Tensor:
    """Gather every field's row of every embedding set.

    Args:
        table: [rows, M, K] float table; row ``offsets[i] + indices[b, i]`` holds the M sets of
            field i's value.
        indices: [B, N] int32/int64 per-field local indices.
        offsets: [N] exclusive cumsum of the field cardinalities.
        field_dims: [N] cardinalities used for the bounds check (default: implied by offsets and
            the table's row count).
        backend: "auto", "reference", "triton" or "cuda".
        sparse_grad: give ``table`` a sparse COO gradient [rows, M, K] of the touched rows
            only, for the sparse table optimizers of ``fastme.train.table_optim``. On the CPU
            the forward runs ``backend``'s lookup and the gradient is *uncoalesced*: the raw
            pairs, one per (sample, field), row ``offsets[i] + indices[b, i]`` in sample-major
            order, which the fused table optimizers sum themselves (no sort per step; call
            ``.coalesce()`` for unique rows). Elsewhere the lookup gathers through the reference
            and the gradient is coalesced (unique sorted rows, duplicates summed;
            deterministic). The values equal the dense path's.

    Returns:
        [B, M, N, K] embeddings, differentiable with respect to ``table``.
    """
    indices, field_dims = prepare_lookup(table, indices, offsets, field_dims)
    fn = _backend.resolve("multi_embedding_lookup", backend, table.device)
    if sparse_grad and table.device.type == "cpu":
        return _RawPairsLookup.apply(table, indices, offsets, fn)
    if sparse_grad:
        return reference.multi_embedding_lookup_sparse_grad(table, indices, offsets)
    return fn(table, indices, offsets)


class _RawPairsLookup(torch.autograd.Function):
    """``lookup`` (a backend's) whose backward hands the table the raw (row, values) pairs as an
    uncoalesced COO gradient: a copy of ``grad`` in pair order, no sort, no table-sized tensor.
    The fused CPU table optimizers sum each row's pairs themselves, deterministically."""

    @staticmethod
    def forward(ctx, table, indices, offsets, lookup):
        ctx.save_for_backward(indices, offsets)
        ctx.table_shape = table.shape
        return lookup(table, indices, offsets)

    @staticmethod
    def backward(ctx, grad):
        indices, offsets = ctx.saved_tensors
        b, m, n, k = grad.shape
        rows = (indices.long() + offsets.long().unsqueeze(0)).reshape(1, b * n)
        values = grad.permute(0, 2, 1, 3).reshape(b * n, m, k)  # [B, N, M, K]: pair order
        sparse = torch.sparse_coo_tensor(rows, values, ctx.table_shape, check_invariants=False)
        return sparse, None, None, None


_backend.register("multi_embedding_lookup", "reference")(reference.multi_embedding_lookup)


def kernel_ops(kernels: BackendOps) -> dict:
    """One backend's lookup custom ops (forward and backward) and the public op they implement."""
    lookup = kernels.define(
        "multi_embedding_lookup",
        "(Tensor table, Tensor indices, Tensor offsets) -> Tensor",
        lambda table, indices, offsets: table.new_empty(
            (indices.shape[0], table.shape[1], indices.shape[1], table.shape[2])
        ),
        gathers=True,
    )
    backward = kernels.define(
        "multi_embedding_lookup_backward",
        "(Tensor grad, Tensor indices, Tensor offsets, SymInt num_rows) -> Tensor",
        lambda grad, indices, offsets, num_rows: grad.new_empty(
            (num_rows, grad.shape[1], grad.shape[3])
        ),
    )
    if lookup is None or backward is None:
        return {}

    def setup_context(ctx, inputs, output):
        table, indices, offsets = inputs
        ctx.save_for_backward(indices, offsets)
        ctx.num_rows = table.shape[0]

    def grad_fn(ctx, grad):
        indices, offsets = ctx.saved_tensors
        return backward(grad, indices, offsets, ctx.num_rows), None, None

    lookup.register_autograd(grad_fn, setup_context=setup_context)
    return {"multi_embedding_lookup": lookup}
