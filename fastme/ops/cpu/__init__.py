"""C++ CPU implementations of the fused ops (kernels/cpu/, bound in fastme._C).

The record below is all fastme.ops reads; the custom ops (CPU dispatch key) run the host functions
of lookup.py, pooling.py, cross.py, projection.py and dropout.py with the schemas, fakes and
autograd of every backend (fastme/ops/_kernel_ops.py).
Ops without a host function here run the reference. It imports without the compiled extension,
which is loaded on the first call. ``backend="auto"`` picks it for CPU tensors whenever the
extension loads. See docs/cpu.md.
"""

import torch

from fastme import _extension
from fastme.ops._kernel_ops import KernelBackend


def _why_not_here(device: torch.device) -> str:
    if device.type != "cpu":
        return f"got tensors on {device}"
    return _extension.cpu_problem()


def _state_planes(layers: int, save: bool) -> int:
    """x_1..x_{L-1} and z_0..z_{L-1} for the backward (fastme/ops/cpu/cross.py); none without."""
    return max(2 * layers - 1, 0) if save else 0


BACKEND = KernelBackend(
    name="cpu",
    package=__name__,
    devices=("cpu",),
    auto=("cpu",),
    needs="CPU tensors and fastme's compiled extension",
    why_not_here=_why_not_here,
    cross_states=_state_planes,
    mixed_lookup_cross=True,
    host_functions={
        "fastme::cpu_multi_embedding_lookup": "lookup.lookup_forward",
        "fastme::cpu_multi_embedding_lookup_backward": "lookup.lookup_backward",
        "fastme::cpu_fm_pooled_lookup": "pooling.fm_forward",
        "fastme::cpu_fm_pooled_lookup_backward": "pooling.fm_backward",
        "fastme::cpu_fwfm_pooled_lookup": "pooling.fwfm_forward",
        "fastme::cpu_fwfm_pooled_lookup_backward": "pooling.fwfm_backward",
        "fastme::cpu_cross_network": "cross.cross_forward",
        "fastme::cpu_cross_network_backward": "cross.cross_backward",
        "fastme::cpu_lookup_cross_network": "cross.lookup_cross_forward",
        "fastme::cpu_set_relu_mean": "projection.relu_mean",
        "fastme::cpu_dropout": "dropout.dropout",
    },
)
