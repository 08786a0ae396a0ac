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

from fastme.models.layers import MultiSetEmbedding
from fastme.train.config import PRECISIONS, TABLE_DTYPES


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


def store_tables(model: torch.nn.Module, table_dtype: str, precision: str) -> torch.nn.Module:
    """Store ``model``'s embedding tables in ``table_dtype``, in place, for scoring: "bf16" halves
    their memory and the bytes a lookup reads. Only under bf16 autocast, where every consumer of
    the embeddings already computes in bfloat16 (DCNv2's cross network reads the gathered rows
    rounded to bfloat16 either way, so its scores do not change); fp32 ops would meet a bf16
    table. Trained weights stay float32 in the checkpoint."""
    if table_dtype not in TABLE_DTYPES:
        raise ValueError(f"table dtype must be one of {TABLE_DTYPES}, got {table_dtype!r}")
    if table_dtype == "fp32":
        return model
    if check_precision(precision) != "bf16":
        raise ValueError(
            "--table-dtype bf16 needs --precision bf16: the bf16 tables feed ops that compute "
            "in bf16 only under bf16 autocast"
        )
    tables = [m for m in model.modules() if isinstance(m, MultiSetEmbedding)]
    if not tables:
        raise ValueError("--table-dtype bf16: the model has no fastme embedding table")
    for table in tables:
        table.weight.data = table.weight.data.to(torch.bfloat16)
    return model
