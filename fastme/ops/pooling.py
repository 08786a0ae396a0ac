"""FM and field-weighted (FwFM) pooling, alone and fused with the lookup."""

from __future__ import annotations

import torch

from fastme.ops import _backend, reference
from fastme.ops._validation import (FLOAT_DTYPES, check_same_dtype, check_shape, check_tensor,
                                    prepare_lookup)


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


def fwfm_pooling(emb: torch.Tensor, field_weights: torch.Tensor, *,
                 backend: str = "auto") -> torch.Tensor:
    """sum_{i,j} r_ij e_i ⊙ e_j per set (diagonal included): [B, M, N, K] -> [B, M, K], with the
    [M, N, N] matrix; differentiable in both. Backends as for :func:`fm_pooling`."""
    check_tensor(emb, "emb", ndim=4, dtypes=FLOAT_DTYPES)
    _check_field_weights(field_weights, emb.shape[1], emb.shape[2], emb, "embeddings")
    return _backend.resolve("fwfm_pooling", backend, emb.device)(emb, field_weights)


def pooled_lookup(table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                  field_weights: torch.Tensor | None = None, *,
                  field_dims: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
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
