"""Triton implementations of the fused ops (GPU, or CPU through TRITON_INTERPRET=1).

Importing this package defines the ``fastme::triton_*`` custom ops from the host functions of
lookup.py, pooling.py and cross.py and registers them as the "triton" backend of every op; the
schemas, fake implementations and autograd are shared with the CUDA backend
(fastme/ops/_kernel_ops.py). See docs/ops.md.
"""

from fastme.ops import _kernel_ops
from fastme.ops.triton import cross, lookup, pooling

# The forward keeps x_1..x_{L-1} whether or not a gradient follows: the kernel works in them.
OPS = _kernel_ops.define_backend(
    "triton",
    lookup=lookup.lookup_forward, lookup_grad=lookup.lookup_backward,
    fm=pooling.fm_forward, fm_grad=pooling.fm_backward,
    fwfm=pooling.fwfm_forward, fwfm_grad=pooling.fwfm_backward,
    cross=lambda x0, weight, bias, save: cross.cross_forward(x0, weight, bias),
    cross_grad=cross.cross_backward,
    cross_states=lambda layers, save: max(layers - 1, 0),
    lookup_cross=lambda table, indices, offsets, weight, bias, save: cross.lookup_cross_forward(
        table, indices, offsets, weight, bias))
