"""What every kernel backend decides the same way, so that Triton and CUDA give the same numbers
for the same settings: the accumulation dtype, when float32 products may use TF32, when table
gradients must be deterministic, how a (sample, field) pair maps to a table row, and which tables
the kernels refuse."""

from __future__ import annotations

import functools
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


# ---- autocast ------------------------------------------------------------------------------------
# Under ``torch.autocast`` every backend follows torch's own rule for what it fuses: matrix
# products in the autocast dtype, gathers and sums in the dtype of their inputs. So the cross
# network (GEMMs) takes x0, weight and bias in the autocast dtype and accumulates in float32
# (acc_dtype); lookups and FM/FwFM pooled lookups read the float32 tables and compute in float32;
# the fused lookup + cross network gathers in float32 and casts x0 for the GEMMs (never the
# table: casting a whole table every step would cost more than it saves). The reference runs
# torch's ops, which autocast itself casts by the same rule.


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes matrix products in on ``device_type``; None when
    autocast is off there."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def autocast_matmul_inputs(*tensors):
    """The inputs of a fused op built on matrix products, cast to the autocast dtype of their
    device when autocast is on there (differentiable casts: float32 master weights get float32
    gradients), unchanged otherwise."""
    dtype = autocast_dtype(tensors[0].device.type)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


def autocast_widest_inputs(*tensors):
    """The float inputs of a gather / sum op cast to the widest float dtype among them when
    autocast is on (a bfloat16 activation with float32 weights), as autocast's "promote" rule
    does; unchanged otherwise."""
    floats = [t for t in tensors if t is not None and t.is_floating_point()]
    if not floats or autocast_dtype(floats[0].device.type) is None:
        return tensors
    widest = functools.reduce(torch.promote_types, (t.dtype for t in floats))
    return tuple(t.to(widest) if t is not None and t.is_floating_point() else t for t in tensors)
