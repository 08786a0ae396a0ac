"""Grouped multi-set lookup on the CPU kernels (kernels/cpu/lookup.cpp).

Forward: OpenMP over the batch, each pair's row copied as M runs of K straight into
[B, M, N, K]. Backward: the dense table gradient, every row written once by the thread that owns
its row range, duplicates summed in ascending pair order (deterministic, bit-identical to the
reference's ``index_add_`` for float32/float64; 16-bit tables summed in float32, rounded once).
"""

import torch

from fastme._extension import require_cpu_kernels
from fastme.ops.cpu import _lib


def lookup_forward(
    table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    rows, m, k = table.shape
    b, n = indices.shape
    out = torch.empty((b, m, n, k), dtype=table.dtype)
    if out.numel() == 0:
        return out
    require_cpu_kernels().cpu_lookup_forward(
        table=table.data_ptr(),
        **_lib.index_args(indices, offsets, rows),
        num_sets=m,
        dim=k,
        out=out.data_ptr(),
        **_lib.run_args(table),
    )
    return out


def lookup_forward_to(
    table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The lookup of a float32 ``table`` into ``dtype`` (bfloat16 or float16), each element
    rounded as ``Tensor.to`` rounds it: what ``lookup_forward(table, ...).to(dtype)`` gives,
    without the float32 [B, M, N, K] in between."""
    rows, m, k = table.shape
    b, n = indices.shape
    out = torch.empty((b, m, n, k), dtype=dtype)
    if out.numel() == 0:
        return out
    require_cpu_kernels().cpu_lookup_forward_to(
        threads=torch.get_num_threads(),
        table=table.data_ptr(),
        **_lib.index_args(indices, offsets, rows),
        num_sets=m,
        dim=k,
        out_dtype=_lib.dtype_code(dtype, "CPU"),
        out=out.data_ptr(),
    )
    return out


def lookup_backward(
    grad: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """Dense table gradient [num_rows, M, K] from ``grad`` [B, M, N, K]."""
    b, m, n, k = grad.shape
    out = torch.empty((num_rows, m, k), dtype=grad.dtype)
    if out.numel() == 0:
        return out
    if grad.numel() == 0:
        return out.zero_()
    require_cpu_kernels().cpu_lookup_backward(
        grad=grad.data_ptr(),
        **_lib.index_args(indices, offsets, num_rows),
        num_sets=m,
        dim=k,
        grad_table=out.data_ptr(),
        **_lib.run_args(grad),
    )
    return out
