"""Grouped multi-set embedding lookup: one gather for all fields and all sets."""

from __future__ import annotations

import torch

from fastme.ops import _backend, reference
from fastme.ops._validation import prepare_lookup


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


_backend.register("multi_embedding_lookup", "reference")(reference.multi_embedding_lookup)
