"""Glue between torch tensors and the compiled kernels of ``fastme._C``.

The extension takes raw device pointers, sizes, dtype codes and the current CUDA stream as
integers, with the argument names of the C++ declarations (kernels/<op>.h); torch allocates every
tensor here (outputs and workspaces).
"""

from __future__ import annotations

import math

import torch

from fastme._extension import require_cuda_kernels
from fastme.ops._kernel_args import dtype_code, index_args
from fastme.ops._policy import acc_dtype, global_rows, use_atomics


def launch(t: torch.Tensor) -> dict:
    """``launch`` = (device, current stream) of ``t``'s device and ``dtype`` = the code of ``t``."""
    stream = torch.cuda.current_stream(t.device).cuda_stream
    return {"launch": (t.device.index, stream), "dtype": dtype_code(t.dtype, "CUDA")}


def scatter_rows(
    src: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """Dense table gradient [num_rows, M, K] from per-pair gradients ``src`` [B, M, N, K]:
    row offsets[i] + indices[b, i] receives src[b, :, i, :], duplicates summed."""
    b, m, n, k = src.shape
    grad = torch.zeros((num_rows, m, k), dtype=src.dtype, device=src.device)
    if src.numel() == 0:
        return grad
    lib = require_cuda_kernels()
    if use_atomics(src.dtype):
        lib.scatter_rows_atomic(
            src=src.data_ptr(),
            **index_args(indices, offsets, num_rows),
            num_sets=m,
            dim=k,
            grad_table=grad.data_ptr(),
            **launch(src),
        )
        return grad
    sorted_rows, perm = torch.sort(global_rows(indices, offsets, num_rows).reshape(-1), stable=True)
    chunks = math.ceil(b * n / lib.SEGMENT_CHUNK)
    head = torch.empty((chunks, m, k), dtype=acc_dtype(src.dtype), device=src.device)
    tail = torch.empty_like(head)
    lib.scatter_rows_sorted(
        src=src.data_ptr(),
        sorted_rows=sorted_rows.data_ptr(),
        perm=perm.data_ptr(),
        num_pairs=b * n,
        num_fields=n,
        num_sets=m,
        dim=k,
        head=head.data_ptr(),
        tail=tail.data_ptr(),
        grad_table=grad.data_ptr(),
        **launch(src),
    )
    return grad
