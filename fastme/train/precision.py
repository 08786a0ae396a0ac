"""The ``precision`` setting as a context: ``"bf16"`` is ``torch.autocast(device type,
torch.bfloat16)``, the standard switch a Python user would write; ``"fp32"`` changes nothing.

Autocast keeps the parameters (tables included) and so their gradients and the optimizer's state
in float32 and runs matrix products in bfloat16 with float32 accumulation; fastme's fused ops
follow the same rule on every backend (fastme/ops/_policy.py). One function, so that training,
evaluation, prediction and export mean the same by "bf16".
"""

from __future__ import annotations

import contextlib

import torch

from fastme.train.config import PRECISIONS


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(precision: str, device: torch.device | str):
    """The context that computes in ``precision`` on ``device`` (a no-op for fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
