"""Grouped multi-set lookup on the CUDA kernels (kernels/lookup.cu).

Forward: one launch gathers [B, M, N, K] from the [rows, M, K] table. Backward: the dense table
gradient, by atomic adds (float32/float64) or by sort + segment reduction (deterministic mode and
16-bit tables), see fastme.ops.cuda._lib.scatter_rows.
"""

import torch

from fastme.ops.cuda import _lib
from fastme.ops.embedding_lookup import register_kernel_autograd


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


@torch.library.custom_op("fastme::cuda_multi_embedding_lookup_backward", mutates_args=(),
                         device_types="cuda")
def lookup_backward_op(grad: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                       num_rows: int) -> torch.Tensor:
    return _lib.scatter_rows(grad.contiguous(), indices.contiguous(), offsets.contiguous(),
                             num_rows)


register_kernel_autograd(lookup_op, lookup_backward_op)


def multi_embedding_lookup(table, indices, offsets):
    """Backend implementation registered as ("multi_embedding_lookup", "cuda")."""
    return lookup_op(table, indices, offsets)
