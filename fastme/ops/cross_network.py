"""Per-set full-rank DCNv2 cross network, alone and fused with the lookup at its front."""

from __future__ import annotations

import torch

from fastme.ops import _backend, reference
from fastme.ops._validation import (FLOAT_DTYPES, check_same_dtype, check_shape, check_tensor,
                                    prepare_lookup)


def _check_cross_params(weight, bias, num_sets, dim, like, like_name):
    check_tensor(weight, "weight", ndim=4, dtypes=FLOAT_DTYPES, device=like.device)
    layers = weight.shape[0]
    check_shape(weight, "weight", (layers, num_sets, dim, dim))
    check_tensor(bias, "bias", ndim=3, dtypes=FLOAT_DTYPES, device=like.device)
    check_shape(bias, "bias", (layers, num_sets, dim))
    check_same_dtype(weight, "weight", like, like_name)
    check_same_dtype(bias, "bias", like, like_name)


def cross_network(x0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                  backend: str = "auto") -> torch.Tensor:
    """x_{l+1} = x_0 ⊙ (W_l^(m) x_l + b_l^(m)) + x_l for all L layers and M sets.

    x0 [B, M, D], weight [L, M, D, D], bias [L, M, D] -> [B, M, D].
    """
    check_tensor(x0, "x0", ndim=3, dtypes=FLOAT_DTYPES)
    _check_cross_params(weight, bias, x0.shape[1], x0.shape[2], x0, "x0")
    fn = _backend.resolve("cross_network", backend, x0.device)
    return fn(x0, weight, bias)


def lookup_cross_network(table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor, *,
                         field_dims: torch.Tensor | None = None,
                         backend: str = "auto") -> torch.Tensor:
    """Lookup fused at the front of the cross network: x_0 gathered from the table per set.

    table [rows, M, K], indices [B, N], weight [L, M, N*K, N*K], bias [L, M, N*K] -> [B, M, N*K].
    """
    indices, _ = prepare_lookup(table, indices, offsets, field_dims)
    _check_cross_params(weight, bias, table.shape[1], indices.shape[1] * table.shape[2], table,
                        "table")
    fn = _backend.resolve("lookup_cross_network", backend, table.device)
    return fn(table, indices, offsets, weight, bias)


_backend.register("cross_network", "reference")(reference.cross_network)
_backend.register("lookup_cross_network", "reference")(reference.lookup_cross_network)
