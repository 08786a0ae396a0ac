"""``ModelSpec``: everything needed to rebuild a model, stored with every checkpoint and result.

A spec names the backbone, the SE/ME mode, the scale, the field cardinalities and the extra
constructor options, and nothing about *how* the fused ops run: the backend is chosen when the
model is rebuilt (the state dict is the same on every backend). Checkpoints, and rebuilding the
trained model of one, are :mod:`fastme.train.checkpoint`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

MODES = ("se", "me")


@dataclass(frozen=True)
class ModelSpec:
    """A model as :func:`fastme.models.build` makes it.

    Attributes:
        name: backbone, a key of :data:`fastme.models.MODELS` ("dcnv2", ...).
        mode: "se" (one embedding of size base * scale) or "me" (scale embeddings of size base).
        scale: the positive model-size multiplier.
        field_dims: cardinality of each field.
        options: extra constructor arguments (JSON values, e.g. ``{"hidden_dim": 64}``).
    """

    name: str
    mode: str
    scale: int
    field_dims: tuple[int, ...]
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        from fastme.models import MODELS

        object.__setattr__(self, "name", str(self.name).lower())
        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; choose from {sorted(MODELS)}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'se' or 'me', got {self.mode!r}")
        if isinstance(self.scale, bool) or int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale!r}")
        object.__setattr__(self, "scale", int(self.scale))
        dims = tuple(int(d) for d in self.field_dims)
        if not dims or min(dims) < 1:
            raise ValueError(f"field_dims must be a non-empty list of positive ints, got {dims}")
        object.__setattr__(self, "field_dims", dims)
        options = dict(self.options)
        if "backend" in options:
            raise ValueError("a ModelSpec holds no backend: pass it to build(backend=...)")
        try:
            json.dumps(options)
        except TypeError as exc:
            raise TypeError(f"model options must be JSON values, got {options!r}") from exc
        object.__setattr__(self, "options", options)

    @property
    def multi(self) -> bool:
        return self.mode == "me"

    def build(self, backend: str = "auto"):
        """A freshly initialised model of this spec (load a state dict into it to restore one)."""
        from fastme.models import build

        return build(
            self.name,
            self.field_dims,
            self.scale,
            multi=self.multi,
            backend=backend,
            **self.options,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "mode": self.mode,
            "scale": self.scale,
            "field_dims": list(self.field_dims),
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        if not isinstance(d, dict):
            raise TypeError(f"a model spec must be a dict, got {type(d).__name__}")
        missing = {"name", "mode", "scale", "field_dims"} - set(d)
        if missing:
            raise ValueError(f"model spec lacks {', '.join(sorted(missing))}: {d!r}")
        return cls(d["name"], d["mode"], d["scale"], d["field_dims"], d.get("options") or {})

    def __str__(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.options.items()))
        return (
            f"{self.name} {self.mode.upper()} x{self.scale} ({len(self.field_dims)} fields, "
            f"{sum(self.field_dims):,} rows{extra})"
        )
