"""Public fused ops. Each takes ``backend="auto" | "reference" | "triton" | "cuda" | "cpu"``.

Shapes and layouts are documented in docs/ops.md; the eager truth is fastme.ops.reference.
"""

from fastme.ops import _backend, reference
from fastme.ops._backend import BackendUnavailable, available_backends
from fastme.ops._validation import bounds_check, get_bounds_check, set_bounds_check
from fastme.ops.cross_network import cross_network, lookup_cross_network
from fastme.ops.cross_network import kernel_ops as _cross_network_ops
from fastme.ops.dropout import dropout
from fastme.ops.dropout import kernel_ops as _dropout_ops
from fastme.ops.embedding_lookup import kernel_ops as _lookup_ops
from fastme.ops.embedding_lookup import multi_embedding_lookup
from fastme.ops.pooling import fm_pooling, fwfm_pooling, pooled_lookup
from fastme.ops.pooling import kernel_ops as _pooling_ops
from fastme.ops.projection import kernel_ops as _projection_ops
from fastme.ops.projection import set_projection_mean

# The registry. Each op module defines its custom ops for every backend (a module may use the
# custom ops of the modules before it); each kernel backend package declares one record, BACKEND,
# listed here in the order backend="auto" tries them. Loading defines every fastme:: custom op.
_backend.load(
    op_modules=(_lookup_ops, _pooling_ops, _cross_network_ops, _projection_ops, _dropout_ops),
    packages=(
        "fastme.ops.triton",
        "fastme.ops.cuda",
        "fastme.ops.cpu",
    ),
)
BACKENDS = _backend.backends()

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "available_backends",
    "bounds_check",
    "cross_network",
    "dropout",
    "fm_pooling",
    "fwfm_pooling",
    "get_bounds_check",
    "lookup_cross_network",
    "multi_embedding_lookup",
    "pooled_lookup",
    "reference",
    "set_bounds_check",
    "set_projection_mean",
]
