"""Lookup fused with FM or field-weighted pooling on the CUDA kernels (kernels/pooling.cu).

The forward never materialises [B, M, N, K]. The backward adds each gathered row's gradient into
the table with atomics, or (deterministic mode, 16-bit tables) writes the per-pair gradients and
scatters them with the sorted segment reduction. The field-weight gradient is always reduced in a
fixed order.
"""

import torch

from fastme.ops.cuda import _lib


def _pooled_shape(table, indices):
    return (indices.shape[0], table.shape[1], table.shape[2])


def _transposed_padded(q: torch.Tensor, pad: int) -> torch.Tensor:
    """qt[m, j, i] = q[m, i, j], with the i axis zero-padded to a multiple of ``pad``."""
    m, n, _ = q.shape
    width = -(-n // pad) * pad
    qt = q.new_zeros((m, n, width))
    qt[:, :, :n] = q.transpose(1, 2)
    return qt


def _table_grad(kernel, grad, table, indices, offsets, **kwargs):
    """Run a pooled backward kernel either straight into the table gradient (atomics) or into
    per-pair gradients that the sorted scatter reduces."""
    rows, m, k = table.shape
    b, n = indices.shape
    common = dict(grad=grad.data_ptr(), table=table.data_ptr(),
                  **_lib.index_args(indices, offsets, rows), num_sets=m, dim=k,
                  **_lib.launch(table), **kwargs)
    if _lib.use_atomics(table.dtype):
        grad_table = torch.zeros_like(table)
        kernel(dest=grad_table.data_ptr(), atomic=True, **common)
        return grad_table
    per_pair = torch.empty((b, m, n, k), dtype=table.dtype, device=table.device)
    kernel(dest=per_pair.data_ptr(), atomic=False, **common)
    return _lib.scatter_rows(per_pair, indices, offsets, rows)


# ---- FM -----------------------------------------------------------------------------------------

@torch.library.custom_op("fastme::cuda_fm_pooled_lookup", mutates_args=(), device_types="cuda")
def fm_op(table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    table, indices, offsets = table.contiguous(), indices.contiguous(), offsets.contiguous()
    out = torch.zeros(_pooled_shape(table, indices), dtype=table.dtype, device=table.device)
    if out.numel() == 0 or indices.shape[1] == 0:  # no fields: an empty sum, zero
        return out
    _lib.ext().fm_forward(table=table.data_ptr(),
                          **_lib.index_args(indices, offsets, table.shape[0]),
                          num_sets=table.shape[1], dim=table.shape[2], out=out.data_ptr(),
                          **_lib.launch(table))
    return out


@fm_op.register_fake
def _(table, indices, offsets):
    return table.new_empty(_pooled_shape(table, indices))


@torch.library.custom_op("fastme::cuda_fm_pooled_lookup_backward", mutates_args=(),
                         device_types="cuda")
def fm_backward_op(grad: torch.Tensor, table: torch.Tensor, indices: torch.Tensor,
                   offsets: torch.Tensor) -> torch.Tensor:
    grad, table = grad.contiguous(), table.contiguous()
    indices, offsets = indices.contiguous(), offsets.contiguous()
    if indices.numel() == 0 or table.shape[1] * table.shape[2] == 0:
        return torch.zeros_like(table)
    return _table_grad(_lib.ext().fm_backward, grad, table, indices, offsets)


@fm_backward_op.register_fake
def _(grad, table, indices, offsets):
    return torch.empty_like(table)


def _fm_setup(ctx, inputs, output):
    table, indices, offsets = inputs
    ctx.save_for_backward(table, indices, offsets)


def _fm_backward(ctx, grad):
    table, indices, offsets = ctx.saved_tensors
    return fm_backward_op(grad, table, indices, offsets), None, None


fm_op.register_autograd(_fm_backward, setup_context=_fm_setup)


# ---- field-weighted -----------------------------------------------------------------------------

def _upper_weights(field_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q_ii = r_ii, q_ij = r_ij + r_ji (i < j), 0 below the diagonal: the same pooled sum over
    half of the pairs."""
    r = field_weights.to(dtype)
    return torch.triu(r + r.transpose(1, 2), diagonal=1) + torch.diag_embed(
        torch.diagonal(r, dim1=1, dim2=2))


@torch.library.custom_op("fastme::cuda_fwfm_pooled_lookup", mutates_args=(), device_types="cuda")
def fwfm_op(table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
            field_weights: torch.Tensor) -> torch.Tensor:
    table, indices, offsets = table.contiguous(), indices.contiguous(), offsets.contiguous()
    out = torch.zeros(_pooled_shape(table, indices), dtype=table.dtype, device=table.device)
    if out.numel() == 0 or indices.shape[1] == 0:
        return out
    lib = _lib.ext()
    qt = _transposed_padded(_upper_weights(field_weights, _lib.acc_dtype(table.dtype)),
                            lib.FWFM_FIELD_PAD)
    lib.fwfm_forward(table=table.data_ptr(), **_lib.index_args(indices, offsets, table.shape[0]),
                     num_sets=table.shape[1], dim=table.shape[2], q_upper=qt.data_ptr(),
                     out=out.data_ptr(), **_lib.launch(table))
    return out


@fwfm_op.register_fake
def _(table, indices, offsets, field_weights):
    return table.new_empty(_pooled_shape(table, indices))


@torch.library.custom_op("fastme::cuda_fwfm_pooled_lookup_backward", mutates_args=(),
                         device_types="cuda")
def fwfm_backward_op(grad: torch.Tensor, table: torch.Tensor, indices: torch.Tensor,
                     offsets: torch.Tensor,
                     field_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grad, table = grad.contiguous(), table.contiguous()
    indices, offsets = indices.contiguous(), offsets.contiguous()
    b, n = indices.shape
    m, k = table.shape[1:]
    if b * n * m * k == 0:
        return torch.zeros_like(table), torch.zeros_like(field_weights)
    lib = _lib.ext()
    acc = _lib.acc_dtype(table.dtype)
    r = field_weights.to(acc)
    qt = _transposed_padded(r + r.transpose(1, 2), lib.FWFM_FIELD_PAD)
    chunks, chunk_size = lib.fwfm_weight_grad_plan(batch=b, num_sets=m, device=table.device.index)
    partial = torch.zeros((chunks, m, n, n), dtype=acc, device=table.device)
    grad_weights = torch.empty((m, n, n), dtype=table.dtype, device=table.device)
    grad_table = _table_grad(lib.fwfm_backward, grad, table, indices, offsets,
                             q_full=qt.data_ptr(), weight_partial=partial.data_ptr(),
                             chunks=chunks, chunk_size=chunk_size,
                             grad_weight=grad_weights.data_ptr())
    return grad_table, grad_weights.to(field_weights.dtype)


@fwfm_backward_op.register_fake
def _(grad, table, indices, offsets, field_weights):
    return torch.empty_like(table), torch.empty_like(field_weights)


def _fwfm_setup(ctx, inputs, output):
    table, indices, offsets, field_weights = inputs
    ctx.save_for_backward(table, indices, offsets, field_weights)


def _fwfm_backward(ctx, grad):
    table, indices, offsets, field_weights = ctx.saved_tensors
    grad_table, grad_weights = fwfm_backward_op(grad, table, indices, offsets, field_weights)
    return grad_table, None, None, grad_weights


fwfm_op.register_autograd(_fwfm_backward, setup_context=_fwfm_setup)


def pooled_lookup(table, indices, offsets, field_weights=None):
    """Backend implementation registered as ("pooled_lookup", "cuda")."""
    if field_weights is None:
        return fm_op(table, indices, offsets)
    return fwfm_op(table, indices, offsets, field_weights)
