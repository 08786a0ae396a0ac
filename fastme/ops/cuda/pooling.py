"""Lookup fused with FM or field-weighted pooling on the CUDA kernels (kernels/pooling.cu).

The forward never materialises [B, M, N, K]. The backward adds each gathered row's gradient into
the table with atomics, or (deterministic mode, 16-bit tables) writes the per-pair gradients and
scatters them with the sorted segment reduction. The field-weight gradient is always reduced in a
fixed order.
"""

import torch

from fastme._extension import require_cuda_kernels
from fastme.ops._policy import acc_dtype, use_atomics
from fastme.ops.cuda import _lib


def _transposed_padded(q: torch.Tensor, pad: int) -> torch.Tensor:
    """qt[m, j, i] = q[m, i, j], with the i axis zero-padded to a multiple of ``pad``."""
    m, n, _ = q.shape
    width = -(-n // pad) * pad
    qt = q.new_zeros((m, n, width))
    qt[:, :, :n] = q.transpose(1, 2)
    return qt


def _upper_weights(field_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q_ii = r_ii, q_ij = r_ij + r_ji (i < j), 0 below the diagonal: the same pooled sum over
    half of the pairs."""
    r = field_weights.to(dtype)
    return torch.triu(r + r.transpose(1, 2), diagonal=1) + torch.diag_embed(
        torch.diagonal(r, dim1=1, dim2=2)
    )


def _forward(kernel, table, indices, offsets, **kwargs):
    out = torch.zeros(
        (indices.shape[0], table.shape[1], table.shape[2]), dtype=table.dtype, device=table.device
    )
    if out.numel() == 0 or indices.shape[1] == 0:  # no fields: an empty sum, zero
        return out
    kernel(
        table=table.data_ptr(),
        **_lib.index_args(indices, offsets, table.shape[0]),
        num_sets=table.shape[1],
        dim=table.shape[2],
        out=out.data_ptr(),
        **_lib.launch(table),
        **kwargs,
    )
    return out


def _table_grad(kernel, grad, table, indices, offsets, **kwargs):
    """Run a pooled backward kernel either straight into the table gradient (atomics) or into
    per-pair gradients that the sorted scatter reduces."""
    rows, m, k = table.shape
    b, n = indices.shape
    common = dict(
        grad=grad.data_ptr(),
        table=table.data_ptr(),
        **_lib.index_args(indices, offsets, rows),
        num_sets=m,
        dim=k,
        **_lib.launch(table),
        **kwargs,
    )
    if use_atomics(table.dtype):
        grad_table = torch.zeros_like(table)
        kernel(dest=grad_table.data_ptr(), atomic=True, **common)
        return grad_table
    per_pair = torch.empty((b, m, n, k), dtype=table.dtype, device=table.device)
    kernel(dest=per_pair.data_ptr(), atomic=False, **common)
    return _lib.scatter_rows(per_pair, indices, offsets, rows)


def fm_forward(table, indices, offsets):
    return _forward(require_cuda_kernels().fm_forward, table, indices, offsets)


def fm_backward(grad, table, indices, offsets):
    if indices.numel() == 0 or table.shape[1] * table.shape[2] == 0:
        return torch.zeros_like(table)
    return _table_grad(require_cuda_kernels().fm_backward, grad, table, indices, offsets)


def fwfm_forward(table, indices, offsets, field_weights):
    lib = require_cuda_kernels()
    qt = _transposed_padded(
        _upper_weights(field_weights, acc_dtype(table.dtype)), lib.FWFM_FIELD_PAD
    )
    return _forward(lib.fwfm_forward, table, indices, offsets, q_upper=qt.data_ptr())


def fwfm_backward(grad, table, indices, offsets, field_weights):
    b, n = indices.shape
    m, k = table.shape[1:]
    if b * n * m * k == 0:
        return torch.zeros_like(table), torch.zeros_like(field_weights)
    lib = require_cuda_kernels()
    acc = acc_dtype(table.dtype)
    r = field_weights.to(acc)
    qt = _transposed_padded(r + r.transpose(1, 2), lib.FWFM_FIELD_PAD)
    plan = lib.fwfm_weight_grad_plan(batch=b, num_sets=m, device=table.device.index)
    partial = torch.zeros((plan[0], m, n, n), dtype=acc, device=table.device)  # chunks x ...
    grad_weights = torch.empty((m, n, n), dtype=table.dtype, device=table.device)
    grad_table = _table_grad(
        lib.fwfm_backward,
        grad,
        table,
        indices,
        offsets,
        q_full=qt.data_ptr(),
        weight_partial=partial.data_ptr(),
        plan=plan,
        grad_weight=grad_weights.data_ptr(),
    )
    return grad_table, grad_weights.to(field_weights.dtype)
