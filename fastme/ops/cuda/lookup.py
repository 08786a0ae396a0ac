"""Grouped multi-set lookup on the CUDA kernels (kernels/lookup.cu).

Forward: one launch gathers [B, M, N, K] from the [rows, M, K] table. Backward: the dense table
gradient, by atomic adds (float32/float64) or by sort + segment reduction (deterministic mode and
16-bit tables), see fastme.ops.cuda._lib.scatter_rows.
"""

import torch

from fastme.ops.cuda import _lib


@torch.library.custom_op("fastme::cuda_multi_embedding_lookup", mutates_args=(),
                         device_types="cuda")
def lookup_op(table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    table, indices, offsets = table.contiguous(), indices.contiguous(), offsets.contiguous()
    rows, m, k = table.shape
    b, n = indices.shape
    out = torch.empty((b, m, n, k), dtype=table.dtype, device=table.device)
    if out.numel() == 0:
        return out
    _lib.ext().lookup_forward(table=table.data_ptr(), **_lib.index_args(indices, offsets, rows),
                              num_sets=m, dim=k, out=out.data_ptr(), **_lib.launch(table))
    return out


@lookup_op.register_fake
def _(table, indices, offsets):
    return table.new_empty((indices.shape[0], table.shape[1], indices.shape[1], table.shape[2]))


@torch.library.custom_op("fastme::cuda_multi_embedding_lookup_backward", mutates_args=(),
                         device_types="cuda")
def lookup_backward_op(grad: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                       num_rows: int) -> torch.Tensor:
    return _lib.scatter_rows(grad.contiguous(), indices.contiguous(), offsets.contiguous(),
                             num_rows)


@lookup_backward_op.register_fake
def _(grad, indices, offsets, num_rows):
    return grad.new_empty((num_rows, grad.shape[1], grad.shape[3]))


def _setup_context(ctx, inputs, output):
    table, indices, offsets = inputs
    ctx.save_for_backward(indices, offsets)
    ctx.num_rows = table.shape[0]


def _backward(ctx, grad):
    indices, offsets = ctx.saved_tensors
    return lookup_backward_op(grad, indices, offsets, ctx.num_rows), None, None


lookup_op.register_autograd(_backward, setup_context=_setup_context)


def multi_embedding_lookup(table, indices, offsets):
    """Backend implementation registered as ("multi_embedding_lookup", "cuda")."""
    return lookup_op(table, indices, offsets)
