"""Fused sparse table optimizers on the CPU (kernels/cpu/table_optim.cpp), for
``fastme.train.table_optim``: one pass that sums each touched row's gradient pairs (a raw or a
coalesced COO gradient; duplicates in ascending pair order, the same bits for every thread count)
and updates the row and its optimizer state in place. And :func:`scatter_pairs`, which writes
the pairs into (or clears them from) the exact dense Adam's persistent gradient buffer."""

from __future__ import annotations

import torch

from fastme import _extension
from fastme.ops.cpu import _lib

#: The kinds the kernel runs, with its codes (kernels/cpu/table_optim.h).
KINDS = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 2, "lazy_adam": 3}


def fused_available(table: torch.Tensor) -> bool:
    """Whether the fused kernel can update ``table`` here: a contiguous float32/float64 CPU
    tensor and CPU kernels that load (an extension older than this kernel does not:
    ``fastme._extension.cpu_problem``)."""
    if table.device.type != "cpu" or table.dtype not in (torch.float32, torch.float64):
        return False
    return table.is_contiguous() and not _extension.cpu_problem()


def new_slots(num_rows: int) -> torch.Tensor:
    """The kernel's row -> slot map, -1 everywhere (kept by the caller between steps)."""
    return torch.full((num_rows,), -1, dtype=torch.int32)


def _state_shapes(kind: str, num_rows: int, m: int, k: int) -> tuple:
    """The shapes of ``state`` (state0, state1) the kernel reads for ``kind`` (None: unused)."""
    return {
        "sgd": (None, None),
        "adagrad": ((num_rows, m * k), None),
        "rowwise_adagrad": ((num_rows, m), None),
        "lazy_adam": ((num_rows, m * k), (num_rows, m * k)),
    }[kind]


def _check_rows(rows: torch.Tensor, num_rows: int, whose: str) -> None:
    """``rows``: a 1-D int CPU tensor of rows in [0, num_rows) (``whose``, for the message)."""
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64) or rows.is_cuda:
        raise ValueError(f"rows must be a 1-D int CPU tensor, got {rows.dtype} {list(rows.shape)}")
    if rows.numel():
        low, high = torch.aminmax(rows)
        if low < 0 or high >= num_rows:
            raise ValueError(
                f"rows must be in [0, {num_rows}) ({whose}), got {int(low)}..{int(high)}"
            )


def _check(kind, table, rows, values, state, slots) -> None:
    """Refuse, naming the argument, what the kernel would read out of bounds or misread."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if table.dim() != 3 or not table.is_contiguous() or table.device.type != "cpu":
        raise ValueError(
            f"table must be a contiguous [rows, M, K] CPU tensor, got {list(table.shape)} "
            f"on {table.device}"
        )
    if table.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"table must be float32 or float64, got {table.dtype}")
    num_rows, m, k = table.shape
    _check_rows(rows, num_rows, "the table's rows")
    if not values.is_floating_point() or values.numel() != rows.numel() * m * k:
        raise ValueError(
            f"values must be float [{rows.numel()}, {m * k}] (one row of M*K per row in rows), "
            f"got {values.dtype} {list(values.shape)}"
        )
    for name, tensor, shape in zip(
        ("state[0]", "state[1]"), state, _state_shapes(kind, *table.shape)
    ):
        if shape is None:
            continue
        if tensor is None:
            raise ValueError(f"{kind} needs {name} {list(shape)}, got None")
        if (
            tuple(tensor.shape) != shape
            or tensor.dtype != table.dtype
            or not tensor.is_contiguous()
            or tensor.device.type != "cpu"
        ):
            raise ValueError(
                f"{kind}'s {name} must be a contiguous {table.dtype} CPU tensor {list(shape)}, "
                f"got {tensor.dtype} {list(tensor.shape)} on {tensor.device}"
            )
    if (
        slots.dtype != torch.int32
        or tuple(slots.shape) != (num_rows,)
        or not slots.is_contiguous()
        or slots.device.type != "cpu"
    ):
        raise ValueError(
            f"slots must be a contiguous int32 CPU tensor [{num_rows}] (new_slots), got "
            f"{slots.dtype} {list(slots.shape)}"
        )


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
    (any order, duplicates allowed, each in [0, R)) and ``values`` [P, M*K] (or [P, M, K]).
    ``state``: adagrad (sum [R, M*K], None), rowwise_adagrad (sum [R, M], None), lazy_adam
    (exp_avg [R, M*K], exp_avg_sq [R, M*K]), sgd (None, None); in the table's dtype. ``slots``:
    :func:`new_slots`, -1 everywhere before and after. ``step`` counts this step (Adam's bias
    correction). Bad arguments raise ValueError naming them."""
    _check(kind, table, rows, values, state, slots)
    num_rows, m, k = table.shape
    rows = rows.to(torch.int64).contiguous()
    values = values.to(table.dtype).reshape(rows.numel(), m * k).contiguous()
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
    # Written through its pointer: tell autograd, as an in-place torch op would.
    torch.autograd.graph.increment_version(table)


def scatter_pairs(buffer: torch.Tensor, rows: torch.Tensor, values: torch.Tensor | None) -> None:
    """``buffer`` [R, ...] (contiguous float32/float64 CPU) += the gradient pairs ``rows`` [P]
    (each in [0, R)) and ``values`` [P, ...], each row's pairs in ascending pair order: the bits
    of ``buffer.index_add_(0, rows, values)`` on one thread, with the rows split between
    threads. ``values`` None writes zeros to those rows instead."""
    if buffer.device.type != "cpu" or buffer.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"buffer must be a float32/float64 CPU tensor, got {buffer.dtype}")
    if not buffer.is_contiguous() or buffer.dim() < 1:
        raise ValueError("buffer must be contiguous with a row dimension")
    num_rows = buffer.shape[0]
    row_elems = buffer[0].numel() if num_rows else 0
    _check_rows(rows, num_rows, "the buffer's rows")
    rows = rows.to(torch.int64).contiguous()
    if values is not None:
        if values.numel() != rows.numel() * row_elems:
            raise ValueError(
                f"values must hold {row_elems} elements per row of rows, got {list(values.shape)}"
            )
        values = values.to(buffer.dtype).contiguous()
    _extension.require_cpu_kernels().cpu_table_pairs_scatter(
        buffer=buffer.data_ptr(),
        num_rows=num_rows,
        row_elems=row_elems,
        rows=rows.data_ptr(),
        pairs=rows.numel(),
        values=0 if values is None else values.data_ptr(),
        zero=values is None,
        **_lib.run_args(buffer),
    )
    torch.autograd.graph.increment_version(buffer)
