"""Public fused ops. Each takes ``backend="auto" | "reference" | "triton" | "cuda"``.

Shapes and layouts are documented in docs/ops.md; the eager truth is fastme.ops.reference.
"""

from fastme.ops import _backend, reference
from fastme.ops._backend import BACKENDS, BackendUnavailable, available_backends
from fastme.ops._validation import get_bounds_check, set_bounds_check
from fastme.ops.cross_network import cross_network, lookup_cross_network
from fastme.ops.embedding_lookup import multi_embedding_lookup
from fastme.ops.pooling import fm_pooling, fwfm_pooling, pooled_lookup

# After the public ops: the kernel packages build on them. Every fastme:: custom op then exists.
_backend.load_kernel_backends()

__all__ = [
    "BACKENDS", "BackendUnavailable", "available_backends", "cross_network", "fm_pooling",
    "fwfm_pooling", "get_bounds_check", "lookup_cross_network", "multi_embedding_lookup",
    "pooled_lookup", "reference", "set_bounds_check",
]
