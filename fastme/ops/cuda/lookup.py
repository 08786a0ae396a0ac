"""Grouped multi-set lookup on the CUDA kernels (kernels/lookup.cu).

Forward: one launch gathers [B, M, N, K] from the [rows, M, K] table. Backward: the dense table
gradient, by atomic adds (float32/float64) or by sort + segment reduction (deterministic mode and
16-bit tables), see fastme.ops.cuda._lib.scatter_rows.
"""

import torch

from fastme._extension import require_cuda_kernels
from fastme.ops.cuda import _lib


def lookup_forward(
    table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    rows, m, k = table.shape
    b, n = indices.shape
    out = torch.empty((b, m, n, k), dtype=table.dtype, device=table.device)
    if out.numel() == 0:
        return out
    require_cuda_kernels().lookup_forward(
        table=table.data_ptr(),
        **_lib.index_args(indices, offsets, rows),
        num_sets=m,
        dim=k,
        out=out.data_ptr(),
        **_lib.launch(table),
    )
    return out
