"""The arguments every compiled backend (CUDA, CPU) passes to ``fastme._C`` in the same form:
the element type codes and the (indices, offsets) record of kernels/types.h."""

from __future__ import annotations

import torch

# Element type codes, shared with kernels/types.h (DType).
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


def dtype_code(dtype: torch.dtype, kernels: str) -> int:
    """The code of ``dtype``; TypeError naming ``kernels`` (e.g. "CUDA") when it has none."""
    try:
        return _DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(f"the {kernels} kernels do not support dtype {dtype}") from None


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
