"""CUDA C++ implementations of the fused ops (kernels/, bound in fastme._C).

Importing this package defines the ``fastme::cuda_*`` custom ops (CUDA dispatch key) from the
host functions of lookup.py, pooling.py and cross.py and registers them as the "cuda" backend of
every op; the schemas, fake implementations and autograd are shared with the Triton backend
(fastme/ops/_kernel_ops.py). It imports without a GPU or a CUDA build: the compiled extension is
loaded on the first call, which raises a clear error when the kernels cannot run. See
docs/cuda.md.
"""

from fastme.ops import _kernel_ops
from fastme.ops.cuda import _lib, cross, lookup, pooling

OPS = _kernel_ops.define_backend(
    "cuda", device_types="cuda",
    lookup=lookup.lookup_forward, lookup_grad=_lib.scatter_rows,
    fm=pooling.fm_forward, fm_grad=pooling.fm_backward,
    fwfm=pooling.fwfm_forward, fwfm_grad=pooling.fwfm_backward,
    cross=cross.cross_forward, cross_grad=cross.cross_backward, cross_states=cross.state_planes)
