"""Triton implementations of the fused ops (GPU, or CPU through TRITON_INTERPRET=1).

The record below is all fastme.ops reads: importing this package needs no Triton; fastme.ops
imports the kernel modules (lookup.py, pooling.py, cross.py) when it loads the backend. The
custom ops' schemas, fakes and autograd are those of every backend (fastme/ops/_kernel_ops.py).
See docs/ops.md.
"""

import os

import torch

from fastme.ops._kernel_ops import KernelBackend


def _why_not_here(device: torch.device) -> str:
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return ""
    return f"got tensors on {device}"


BACKEND = KernelBackend(
    name="triton",
    package=__name__,
    devices=("cuda", "cpu"),  # the CPU through the interpreter, for tests
    auto=("cuda",),  # first: it runs wherever Triton does; not yet timed against CUDA on a GPU
    needs="CUDA tensors and the triton package (or TRITON_INTERPRET=1 for the CPU interpreter; "
    "in a fastme checkout: pip install -e '.[triton]')",
    why_not_here=_why_not_here,
    # the forward keeps x_1..x_{L-1} whether or not a gradient follows: the kernel works in them
    cross_states=lambda layers, save: max(layers - 1, 0),
    host_functions={
        "fastme::triton_multi_embedding_lookup": "lookup.lookup_forward",
        "fastme::triton_multi_embedding_lookup_backward": "lookup.lookup_backward",
        "fastme::triton_fm_pooled_lookup": "pooling.fm_forward",
        "fastme::triton_fm_pooled_lookup_backward": "pooling.fm_backward",
        "fastme::triton_fwfm_pooled_lookup": "pooling.fwfm_forward",
        "fastme::triton_fwfm_pooled_lookup_backward": "pooling.fwfm_backward",
        "fastme::triton_cross_network": "cross.cross_forward",
        "fastme::triton_cross_network_backward": "cross.cross_backward",
        "fastme::triton_lookup_cross_network": "cross.lookup_cross_forward",
    },
)
