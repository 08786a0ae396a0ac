"""What every kernel backend decides the same way, so that Triton and CUDA give the same numbers
for the same settings: the accumulation dtype, when float32 products may use TF32, when table
gradients must be deterministic, how a (sample, field) pair maps to a table row, and which tables
the kernels refuse."""

from __future__ import annotations

import os

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs (the gradcheck path), else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tf32_allowed() -> bool:
    """float32 products on TF32 tensor cores, following PyTorch's own switch,
    ``torch.set_float32_matmul_precision``: "highest" (the default) keeps exact float32, as it
    does for the reference's matmuls; "high"/"medium" allow TF32."""
    return torch.get_float32_matmul_precision() != "highest"


def deterministic() -> bool:
    """Whether kernels must give bit-identical table gradients run to run (no float atomics whose
    order varies): on with ``torch.use_deterministic_algorithms(True)`` or
    FASTME_DETERMINISTIC=1."""
    return torch.are_deterministic_algorithms_enabled() or os.environ.get(
        "FASTME_DETERMINISTIC", "0"
    ) not in ("", "0")


def sums_in_table_dtype(dtype: torch.dtype) -> bool:
    """Whether table-gradient rows may be summed in the table's own dtype. 16-bit tables are
    summed in float32 and rounded once: many 16-bit additions would lose the small terms."""
    return dtype in (torch.float32, torch.float64)


def use_atomics(dtype: torch.dtype) -> bool:
    """Table gradients by float atomic adds straight into the gradient, or (deterministic mode,
    16-bit tables) by a reduction in a fixed order."""
    return sums_in_table_dtype(dtype) and not deterministic()


def global_rows(indices: torch.Tensor, offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """offsets[i] + indices[:, i] as int64 [B, N], clamped into the table exactly as the kernels
    clamp, so that no kernel reads or writes outside the table whatever the bounds check let
    through."""
    return (indices.long() + offsets.long()).clamp_(0, max(num_rows - 1, 0))


def check_nonempty_table(table: torch.Tensor, indices: torch.Tensor) -> None:
    """The in-kernel clamp needs at least one row to clamp into."""
    if table.shape[0] == 0 and indices.numel() > 0:
        raise ValueError(
            "table has 0 rows but indices is not empty: give the table at least one row per field"
        )
