"""``ModelSpec``: everything needed to rebuild a model, stored with every checkpoint and result.

A spec names the backbone, the SE/ME mode, the scale, the field cardinalities and the extra
constructor options, and nothing about *how* the fused ops run: the backend is chosen when the
model is rebuilt (the state dict is the same on every backend).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("se", "me")

#: Key of the spec in a checkpoint dict (and in results.json).
CHECKPOINT_KEY = "spec"


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

        return build(self.name, self.field_dims, self.scale, multi=self.multi, backend=backend,
                     **self.options)

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "scale": self.scale,
                "field_dims": list(self.field_dims), "options": dict(self.options)}

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
        return (f"{self.name} {self.mode.upper()} x{self.scale} ({len(self.field_dims)} fields, "
                f"{sum(self.field_dims):,} rows{extra})")


class CheckpointError(ValueError):
    """A file that should be a fastme checkpoint cannot be read as one."""


def read_checkpoint(path, device="cpu", hint: str | None = None) -> dict:
    """The dict of a checkpoint file written by fastme (model state dict, spec, data, ...): the
    one place that opens a checkpoint, for training, serving and analysis.

    Raises :class:`CheckpointError` naming the file when it is empty, truncated or not a fastme
    checkpoint, in one line of our own: torch's messages for such files advise loading with
    ``weights_only=False`` (which would run code from the file) and filing an issue. ``hint`` is
    appended as the caller's advice. A missing file raises FileNotFoundError.
    """
    import pickle
    import warnings

    import torch

    path = Path(path)
    end = f"; {hint}" if hint else ""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4 ... file an issue"
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        if path.is_file() and path.stat().st_size == 0:
            what = "the file is empty"
        elif isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            what = "it holds Python objects that a fastme checkpoint never contains"
        else:
            what = f"truncated, damaged or another kind of file: {type(exc).__name__}"
        raise CheckpointError(f"{path} is not a readable fastme checkpoint ({what}){end}") \
            from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not a fastme checkpoint (no 'model' state dict){end}")
    return ckpt


def load_trained(checkpoint, backend: str = "reference", device="cpu"):
    """Rebuild the trained model of a checkpoint (a file, or a run directory: its best.pt, else
    last.pt) from the spec it carries.

    Returns (model in eval mode on ``device``, the checkpoint dict).
    """
    path = find_checkpoint(checkpoint)
    ckpt = read_checkpoint(path, device, hint="point to a run's best.pt or last.pt")
    if not isinstance(ckpt.get(CHECKPOINT_KEY), dict):
        raise ValueError(f"{path} carries no model spec; it was written by an older fastme: "
                         f"retrain, or rebuild the model yourself and load ckpt['model']")
    spec = ModelSpec.from_dict(ckpt[CHECKPOINT_KEY])
    model = spec.build(backend)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit its spec {spec}: {exc}") from exc
    return model.to(device).eval(), ckpt


CHECKPOINT_NAMES = ("best.pt", "last.pt")


def find_checkpoint(path) -> Path:
    """A checkpoint file, or a run directory's best.pt (else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {' or '.join(CHECKPOINT_NAMES)} in directory {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path
