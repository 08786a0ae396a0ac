"""Fused sparse table optimizers on the CPU (kernels/cpu/table_optim.cpp), for
``fastme.train.table_optim``: one pass that sums each touched row's gradient pairs (a raw or a
coalesced COO gradient; duplicates in ascending pair order, the same bits for every thread count)
and updates the row and its optimizer state in place."""

from __future__ import annotations

import torch

from fastme import _extension
from fastme.ops.cpu import _lib

#: The kinds the kernel runs, with its codes (kernels/cpu/table_optim.h).
KINDS = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 2, "lazy_adam": 3}


def fused_available(table: torch.Tensor) -> bool:
    """Whether the fused kernel can update ``table`` here: a contiguous float32/float64 CPU
    tensor and an extension that has the kernel."""
    if table.device.type != "cpu" or table.dtype not in (torch.float32, torch.float64):
        return False
    if not table.is_contiguous() or _extension.cpu_problem():
        return False
    return hasattr(_extension.load(), "cpu_table_optim_step")


def new_slots(num_rows: int) -> torch.Tensor:
    """The kernel's row -> slot map, -1 everywhere (kept by the caller between steps)."""
    return torch.full((num_rows,), -1, dtype=torch.int32)


def sparse_step(
    kind: str,
    table: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor,
    state: tuple[torch.Tensor | None, torch.Tensor | None],
    slots: torch.Tensor,
    *,
    lr: float,
    weight_decay: float,
    eps: float,
    betas: tuple[float, float],
    step: int,
) -> None:
    """Update ``table`` [R, M, K] and ``state`` in place from the gradient pairs ``rows`` [P]
    (int64, any order, duplicates allowed) and ``values`` [P, M*K] (see kernels/cpu/table_optim.h
    for each kind's state)."""
    num_rows, m, k = table.shape
    rows = rows.to(torch.int64).contiguous()
    values = values.to(table.dtype).reshape(rows.numel(), m * k).contiguous()
    for t in state:
        if t is not None and (t.dtype != table.dtype or not t.is_contiguous()):
            raise ValueError("the table optimizer's state must be contiguous, in the table's dtype")
    if slots.dtype != torch.int32 or slots.numel() != num_rows:
        raise ValueError(f"slots must be int32 [{num_rows}], got {slots.dtype} {list(slots.shape)}")
    state0, state1 = state
    _extension.require_cpu_kernels().cpu_table_optim_step(
        kind=KINDS[kind],
        table=table.data_ptr(),
        num_rows=num_rows,
        num_sets=m,
        dim=k,
        rows=rows.data_ptr(),
        pairs=rows.numel(),
        grad=values.data_ptr(),
        state0=0 if state0 is None else state0.data_ptr(),
        state1=0 if state1 is None else state1.data_ptr(),
        slots=slots.data_ptr(),
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        beta1=betas[0],
        beta2=betas[1],
        step=step,
        **_lib.run_args(table),
    )
