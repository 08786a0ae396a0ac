"""Drop-in SE and ME models for the seven backbones of the paper, and the heterogeneous
multi-embedding model (``Hetero``: sets of several expert kinds, gated).

Every class is constructed as ``Model(field_dims, embed_dim, num_sets, backend, **options)`` and
maps LongTensor [B, N] -> logits [B]. ``build`` gives the paper's scaled variants.
"""

from fastme.models.autoint import AutoInt
from fastme.models.base import MultiEmbeddingModel
from fastme.models.dcnv2 import DCNv2
from fastme.models.dnn import DNN
from fastme.models.finalmlp import FinalMLP
from fastme.models.hetero import Hetero
from fastme.models.ipnn import IPNN
from fastme.models.nfwfm import NFwFM
from fastme.models.spec import ModelSpec
from fastme.models.xdeepfm import xDeepFM

MODELS = {
    cls.__name__.lower(): cls
    for cls in (DNN, IPNN, NFwFM, xDeepFM, DCNv2, FinalMLP, AutoInt, Hetero)
}


def build(
    name: str,
    field_dims,
    scale: int = 1,
    multi: bool | None = None,
    backend: str = "auto",
    **options,
) -> MultiEmbeddingModel:
    """The paper's scaled variant of a backbone.

    SE (``multi=False``) at scale s: one set of size ``base * s``. ME (``multi=True``) at scale s:
    ``s`` sets of size ``base``. ``base`` is the class's ``base_embed_dim`` (10; 50 for NFwFM).
    Both have the same number of embedding parameters. ``options`` go to the model constructor.
    ``multi=None`` is the model's own default: ME for ``"hetero"`` (its sets feed different
    experts), SE for the backbones.

    The model's ``spec`` attribute is the :class:`ModelSpec` that rebuilds it
    (``model.spec.build()``); checkpoints and results store ``spec.to_dict()``.
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    cls = MODELS[key]
    multi = cls.default_multi if multi is None else bool(multi)
    base = cls.base_embed_dim
    embed_dim, num_sets = (base, int(scale)) if multi else (base * int(scale), 1)
    spec = ModelSpec(key, "me" if multi else "se", int(scale), field_dims, options)
    model = cls(field_dims, embed_dim=embed_dim, num_sets=num_sets, backend=backend, **options)
    model.spec = spec
    return model


__all__ = [
    "AutoInt",
    "DCNv2",
    "DNN",
    "FinalMLP",
    "Hetero",
    "IPNN",
    "MODELS",
    "ModelSpec",
    "MultiEmbeddingModel",
    "NFwFM",
    "build",
    "xDeepFM",
]
