"""JSON for results files: numpy scalars and arrays, tensors and paths written as plain values."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def json_default(obj):
    """``json.dumps(..., default=json_default)``: numpy/torch values as numbers or lists, paths as
    strings."""
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray) or hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
