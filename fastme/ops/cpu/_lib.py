"""Glue between torch tensors and the CPU kernels of ``fastme._C`` (kernels/cpu/).

The extension takes raw host pointers, sizes, dtype codes and the OpenMP team size as integers,
with the argument names of the C++ declarations (kernels/cpu/<op>.h); torch allocates every
tensor here.
"""

from __future__ import annotations

import torch

# Element type codes, shared with kernels/types.h (DType).
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


def run_args(t: torch.Tensor) -> dict:
    """``threads`` = torch's intra-op thread count (torch.set_num_threads / --threads govern the
    kernels too) and ``dtype`` = the code of ``t``."""
    try:
        code = _DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"the CPU kernels do not support dtype {t.dtype}") from None
    return {"threads": torch.get_num_threads(), "dtype": code}


def index_args(indices: torch.Tensor, offsets: torch.Tensor, num_rows: int) -> dict:
    """``ix``, the (indices, offsets) argument every lookup kernel takes (IndexArgs, in order)."""
    return {
        "ix": (
            indices.data_ptr(),
            indices.dtype == torch.int64,
            offsets.data_ptr(),
            offsets.dtype == torch.int64,
            num_rows,
            indices.shape[0],
            indices.shape[1],
        )
    }
