"""CUDA C++ implementations of the fused ops (kernels/, bound in fastme._C).

Importing this package registers the "cuda" backend of every op with fastme.ops._backend. It
imports without a GPU or a CUDA build: the compiled extension is loaded on the first call, which
raises a clear error when the kernels cannot run (no CUDA build, no device, CPU tensors).

Each op is a ``torch.library.custom_op`` (namespace ``fastme``, names ``cuda_*``, CUDA dispatch
key) with a fake implementation and an autograd formula, so it works in eager mode, under
``torch.compile`` and with ``torch.autograd.gradcheck``. See docs/cuda.md.
"""

from fastme.ops import _backend
from fastme.ops.cuda.cross import cross_network, lookup_cross_network
from fastme.ops.cuda.lookup import multi_embedding_lookup
from fastme.ops.cuda.pooling import pooled_lookup

_backend.register("multi_embedding_lookup", "cuda")(multi_embedding_lookup)
_backend.register("pooled_lookup", "cuda")(pooled_lookup)
_backend.register("cross_network", "cuda")(cross_network)
_backend.register("lookup_cross_network", "cuda")(lookup_cross_network)

__all__ = ["cross_network", "lookup_cross_network", "multi_embedding_lookup", "pooled_lookup"]
