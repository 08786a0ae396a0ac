"""fastme: fused kernels and drop-in multi-embedding (ME) models for CTR prediction.

``import fastme.ops`` gives the fused ops, ``fastme.models`` the SE/ME backbones.
"""

__version__ = "0.1.0"

# Every fastme:: custom op (schemas and fake kernels, whichever backends can run here) is
# registered on import, so a torch.export program traced with a kernel backend loads.
from fastme import ops as _ops  # noqa: E402,F401

__all__ = ["__version__"]
