"""Dropout on the CPU (kernels/cpu/dropout.cpp): one pass that hashes each element's index with
the seed and writes x * 1/(1-p) or 0."""

import torch

from fastme._extension import require_cpu_kernels
from fastme.ops import reference
from fastme.ops.cpu import _lib


def dropout(x, p, seed):
    lib = require_cpu_kernels()
    out = torch.empty_like(x)
    if x.numel():
        lib.cpu_dropout(
            **_lib.run_args(x),
            x=x.data_ptr(),
            out=out.data_ptr(),
            n=x.numel(),
            seed=int(seed) & 0xFFFFFFFFFFFFFFFF,
            threshold=reference.dropout_threshold(p),
            scale=1.0 / (1.0 - p),
        )
    return out
