"""Lookup fused with FM or field-weighted (FwFM) pooling on the CPU kernels
(kernels/cpu/pooling.cpp).

Neither pass writes anything of [B, M, N, K]: the forward pools each sample's gathered rows in a
per-thread buffer (FwFM over the upper triangle of the pairs, weights folded as r_ij + r_ji); the
backward computes the gradients of a block of samples' rows in cache and adds them into the
table gradient with the lookup backward's row split (each row's pairs in ascending order:
deterministic). The field-weight gradient is summed per fixed range of samples, then over the
ranges in order: the same bits for every thread count. 16-bit tables: gradients summed in
float32, rounded once.
"""

import torch

from fastme._extension import require_cpu_kernels
from fastme.ops._policy import acc_dtype
from fastme.ops.cpu import _lib


def _upper_weights(field_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q_ii = r_ii, q_ij = r_ij + r_ji (i < j), 0 below the diagonal: the same pooled sum over
    half of the pairs."""
    r = field_weights.to(dtype)
    return (
        torch.triu(r + r.transpose(1, 2), diagonal=1)
        + torch.diag_embed(torch.diagonal(r, dim1=1, dim2=2))
    ).contiguous()


def _forward(kernel, table, indices, offsets, **kwargs):
    rows, m, k = table.shape
    b, n = indices.shape
    if b * m * k == 0 or n == 0:  # no fields: an empty sum, zero
        return torch.zeros((b, m, k), dtype=table.dtype)
    out = torch.empty((b, m, k), dtype=table.dtype)
    kernel(
        table=table.data_ptr(),
        **_lib.index_args(indices, offsets, rows),
        num_sets=m,
        dim=k,
        out=out.data_ptr(),
        **_lib.run_args(table),
        **kwargs,
    )
    return out


def _table_grad(kernel, grad, table, indices, offsets, **kwargs):
    """The dense table gradient, summed in the accumulation dtype."""
    rows, m, k = table.shape
    grad_table = torch.empty((rows, m, k), dtype=acc_dtype(table.dtype))
    kernel(
        grad=grad.data_ptr(),
        table=table.data_ptr(),
        **_lib.index_args(indices, offsets, rows),
        num_sets=m,
        dim=k,
        grad_table=grad_table.data_ptr(),
        **_lib.run_args(table),
        **kwargs,
    )
    return grad_table.to(table.dtype)


def fm_forward(table, indices, offsets):
    return _forward(require_cpu_kernels().cpu_fm_forward, table, indices, offsets)


def fm_backward(grad, table, indices, offsets):
    if indices.numel() == 0 or table.shape[1] * table.shape[2] == 0:
        return torch.zeros_like(table)
    return _table_grad(require_cpu_kernels().cpu_fm_backward, grad, table, indices, offsets)


def fwfm_forward(table, indices, offsets, field_weights):
    q_upper = _upper_weights(field_weights, acc_dtype(table.dtype))
    return _forward(
        require_cpu_kernels().cpu_fwfm_forward, table, indices, offsets, q_upper=q_upper.data_ptr()
    )


def fwfm_backward(grad, table, indices, offsets, field_weights):
    b, n = indices.shape
    m, k = table.shape[1:]
    if b * n * m * k == 0:
        return torch.zeros_like(table), torch.zeros_like(field_weights)
    acc = acc_dtype(table.dtype)
    r = field_weights.to(acc)
    q_full = (r + r.transpose(1, 2)).contiguous()
    grad_weights = torch.empty((m, n, n), dtype=acc)
    grad_table = _table_grad(
        require_cpu_kernels().cpu_fwfm_backward,
        grad,
        table,
        indices,
        offsets,
        q_full=q_full.data_ptr(),
        grad_weight=grad_weights.data_ptr(),
    )
    return grad_table, grad_weights.to(field_weights.dtype)
