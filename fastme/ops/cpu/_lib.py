"""Glue between torch tensors and the CPU kernels of ``fastme._C`` (kernels/cpu/).

The extension takes raw host pointers, sizes, dtype codes and the OpenMP team size as integers,
with the argument names of the C++ declarations (kernels/cpu/<op>.h); torch allocates every
tensor here.
"""

from __future__ import annotations

import torch

from fastme.ops._kernel_args import dtype_code, index_args  # noqa: F401 (index_args: for lookup.py)


def run_args(t: torch.Tensor) -> dict:
    """``threads`` = torch's intra-op thread count (torch.set_num_threads / --threads govern the
    kernels too) and ``dtype`` = the code of ``t``."""
    return {"threads": torch.get_num_threads(), "dtype": dtype_code(t.dtype, "CPU")}
