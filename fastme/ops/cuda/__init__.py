"""CUDA C++ implementations of the fused ops (kernels/, bound in fastme._C).

The record below is all fastme.ops reads; the custom ops (CUDA dispatch key) run the host
functions of lookup.py, pooling.py and cross.py, with the schemas, fakes and autograd of every
backend (fastme/ops/_kernel_ops.py). It imports without a GPU or a CUDA build: the compiled
extension is loaded on the first call. See docs/cuda.md.
"""

import torch

from fastme import _extension
from fastme.ops._kernel_ops import KernelBackend


def _why_not_here(device: torch.device) -> str:
    if device.type != "cuda":
        return f"got tensors on {device}"
    return _extension.cuda_problem()


def _state_planes(layers: int, save: bool) -> int:
    """x_1..x_{L-1} and z_0..z_{L-1} for the backward; else one scratch plane (fastme/ops/cuda/
    cross.py)."""
    if save:
        return max(2 * layers - 1, 0)
    return 1 if layers >= 2 else 0


BACKEND = KernelBackend(
    name="cuda",
    package=__name__,
    devices=("cuda",),
    auto=("cuda",),
    needs="CUDA tensors and fastme's CUDA kernels",
    why_not_here=_why_not_here,
    cross_states=_state_planes,
    host_functions={
        "fastme::cuda_multi_embedding_lookup": "lookup.lookup_forward",
        "fastme::cuda_multi_embedding_lookup_backward": "_lib.scatter_rows",
        "fastme::cuda_fm_pooled_lookup": "pooling.fm_forward",
        "fastme::cuda_fm_pooled_lookup_backward": "pooling.fm_backward",
        "fastme::cuda_fwfm_pooled_lookup": "pooling.fwfm_forward",
        "fastme::cuda_fwfm_pooled_lookup_backward": "pooling.fwfm_backward",
        "fastme::cuda_cross_network": "cross.cross_forward",
        "fastme::cuda_cross_network_backward": "cross.cross_backward",
        "fastme::cuda_lookup_cross_network": "cross.lookup_cross_forward",
    },
)
