"""fastme: fused kernels and drop-in multi-embedding (ME) models for CTR prediction.

``import fastme.ops`` gives the fused ops, ``fastme.models`` the SE/ME backbones.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
