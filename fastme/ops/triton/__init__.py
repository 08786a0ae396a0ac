"""Triton implementations of the fused ops (GPU, or CPU through TRITON_INTERPRET=1).

Importing this package registers the "triton" backend of every op with fastme.ops._backend.
Each op is a ``torch.library.custom_op`` (namespace ``fastme``, names ``triton_*``) with a fake
(meta) implementation and an autograd formula, so it runs in eager mode, under
``torch.compile(fullgraph=True)`` and in ``torch.autograd.gradcheck``. See docs/ops.md.
"""

from fastme.ops import _backend
from fastme.ops.triton.cross import cross_network, lookup_cross_network
from fastme.ops.triton.lookup import multi_embedding_lookup
from fastme.ops.triton.pooling import pooled_lookup

_backend.register("multi_embedding_lookup", "triton")(multi_embedding_lookup)
_backend.register("pooled_lookup", "triton")(pooled_lookup)
_backend.register("cross_network", "triton")(cross_network)
_backend.register("lookup_cross_network", "triton")(lookup_cross_network)

__all__ = ["cross_network", "lookup_cross_network", "multi_embedding_lookup", "pooled_lookup"]
