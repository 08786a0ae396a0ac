"""Input checks shared by every op: one call per op, messages that name the argument."""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import torch

from fastme import _extension
from fastme.ops._policy import autocast_dtype

INDEX_DTYPES = (torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# What to do with an index outside its field: "error" (default) raises, "clamp" clamps into range
# and warns, "off" skips the check (fastest; out-of-range input is then the caller's problem, but
# kernels still never read outside the table because rows are clamped in-kernel).
BOUNDS_CHECK_MODES = ("error", "clamp", "off")
_bounds_check_mode = os.environ.get("FASTME_BOUNDS_CHECK", "error")


def set_bounds_check(mode: str) -> None:
    """Set the global index bounds-check mode: 'error', 'clamp' or 'off'."""
    global _bounds_check_mode
    if mode not in BOUNDS_CHECK_MODES:
        raise ValueError(f"bounds check mode must be one of {BOUNDS_CHECK_MODES}, got {mode!r}")
    _bounds_check_mode = mode


def get_bounds_check() -> str:
    return _bounds_check_mode


@contextlib.contextmanager
def bounds_check(mode: str):
    """The bounds-check mode ``mode`` inside the block; the previous one is restored after."""
    previous = _bounds_check_mode
    set_bounds_check(mode)
    try:
        yield
    finally:
        set_bounds_check(previous)


def check_tensor(t, name: str, *, ndim: int | None = None, dtypes=None, device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but must be on {device} like the table")


def check_same_dtype(t: torch.Tensor, name: str, like: torch.Tensor, like_name: str) -> None:
    """Equal dtypes, except under torch.autocast, where a bfloat16 activation meets float32
    weights by design and the op casts them (fastme/ops/_policy.py, autocast)."""
    if t.dtype != like.dtype and autocast_dtype(like.device.type) is None:
        raise TypeError(
            f"{name} must have the dtype of the {like_name} ({like.dtype}), got {t.dtype}"
        )


def check_shape(t: torch.Tensor, name: str, expected: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_lookup_inputs(
    table: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    field_dims: torch.Tensor | None = None,
) -> None:
    """Validate the (table, indices, offsets) triple of every lookup-based op.

    table [rows, M, K] float; indices [B, N] int32/int64; offsets [N] (exclusive cumsum of the
    field cardinalities). ``field_dims`` [N], if given, bounds each field's local index.
    """
    check_tensor(table, "table", ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor(indices, "indices", ndim=2, dtypes=INDEX_DTYPES, device=table.device)
    check_tensor(offsets, "offsets", ndim=1, dtypes=INDEX_DTYPES, device=table.device)
    if offsets.shape[0] != indices.shape[1]:
        raise ValueError(
            f"offsets has {offsets.shape[0]} entries but indices has {indices.shape[1]} fields"
        )
    if field_dims is not None:
        check_tensor(field_dims, "field_dims", ndim=1, dtypes=INDEX_DTYPES, device=table.device)
        check_shape(field_dims, "field_dims", offsets.shape)


def field_dims_from_offsets(offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Field cardinalities implied by offsets and the table's row count (last field to the end).
    Built on the device without a host->device copy (which would block the host per call)."""
    ends = torch.empty_like(offsets)
    ends[:-1] = offsets[1:]
    ends[-1:] = num_rows
    return ends - offsets


def apply_bounds_check(
    indices: torch.Tensor, field_dims: torch.Tensor, name: str = "indices", mode: str | None = None
) -> torch.Tensor:
    """Enforce 0 <= indices[:, i] < field_dims[i] according to the bounds-check mode.

    Returns the (possibly clamped) indices. 'error' costs one device->host sync per call; use
    'off' in a tuned training loop whose data was already validated (the cache is checked once).
    """
    mode = mode or _bounds_check_mode
    if mode == "off" or indices.numel() == 0:
        return indices
    found = _cpu_bad_pairs(indices, field_dims) if mode in ("error", "clamp") else None
    if found is not None:
        first, count = found
        if count == 0:
            return indices
        if mode == "error":
            b, i = divmod(first, indices.shape[1])
            _raise_out_of_range(indices, field_dims, name, b, i)
        _warn_clamped(count, name)
        return _clamp(indices, field_dims.to(indices.dtype).unsqueeze(0))
    limits = field_dims.to(indices.dtype).unsqueeze(0)
    bad = (indices < 0) | (indices >= limits)
    if torch.compiler.is_compiling():
        # Inside torch.compile a Python branch on tensor data would break the graph: 'error'
        # becomes an asynchronous assertion, 'clamp' clamps without counting (no warning).
        if mode == "error":
            torch._assert_async(
                ~bad.any(), f"{name} has an index out of range for its field (0 <= x < field_dims)"
            )
            return indices
        if mode == "clamp":
            return torch.minimum(indices.clamp_min(0), limits - 1)
    if mode == "error":
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            _raise_out_of_range(indices, field_dims, name, b, i)
        return indices
    if mode == "clamp":
        if bool(bad.any()):
            _warn_clamped(int(bad.sum()), name)
            return _clamp(indices, limits)
        return indices
    raise ValueError(f"bounds check mode must be one of {BOUNDS_CHECK_MODES}, got {mode!r}")


def _cpu_bad_pairs(indices: torch.Tensor, field_dims: torch.Tensor) -> tuple[int, int] | None:
    """(first out-of-range pair as b * N + i or -1, their count) from one pass of the CPU kernel
    (kernels/cpu/lookup.cpp) over CPU indices; None where it cannot run (other devices, inside
    torch.compile, no extension). The torch expression's comparisons, temporaries and reduction
    cost ~0.3 ms per call at B=4096 x 39 fields on one core: a third of the CPU lookup's own
    time at M=1."""
    if indices.device.type != "cpu" or torch.compiler.is_compiling() or _extension.cpu_problem():
        return None
    indices, field_dims = indices.contiguous(), field_dims.contiguous()
    return _extension.load().cpu_check_indices(
        threads=torch.get_num_threads(),
        indices=indices.data_ptr(),
        indices_int64=indices.dtype == torch.int64,
        batch=indices.shape[0],
        num_fields=indices.shape[1],
        field_dims=field_dims.data_ptr(),
        field_dims_int64=field_dims.dtype == torch.int64,
    )


def _raise_out_of_range(indices, field_dims, name: str, b: int, i: int):
    raise IndexError(
        f"{name}[{b}, {i}] = {int(indices[b, i])} is out of range for field {i} "
        f"(cardinality {int(field_dims[i])}); indices must satisfy 0 <= x < field_dims"
    )


def _warn_clamped(count: int, name: str) -> None:
    import warnings

    # stacklevel: the public op (op -> prepare_lookup -> apply_bounds_check -> here), as before
    warnings.warn(
        f"{count} out-of-range entries in {name} were clamped", RuntimeWarning, stacklevel=4
    )


def _clamp(indices: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    return torch.minimum(indices.clamp_min(0), limits - 1)


def check_offsets(
    offsets: torch.Tensor, field_dims: torch.Tensor, num_rows: int, implied: bool
) -> None:
    """Every field's rows lie in the table: 0 <= offsets[i] and offsets[i] + field_dims[i] <=
    rows. ``implied``: field_dims came from the offsets, which must then neither decrease nor
    pass the table's end (a negative implied cardinality). One device->host sync."""
    starts, dims = offsets.long(), field_dims.long()
    bad = (starts < 0) | (dims < 0)
    if not implied:
        bad |= starts + dims > num_rows
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), "offsets/field_dims reach outside the table's rows")
        return
    if not bool(bad.any()):
        return
    i = int(bad.nonzero()[0])
    start = int(starts[i])
    if start < 0:
        raise ValueError(
            f"offsets[{i}] = {start} is negative; offsets[i] is the table row of "
            "field i's value 0 (the exclusive cumsum of field_dims)"
        )
    if implied:
        if start > num_rows:
            raise ValueError(
                f"offsets[{i}] = {start} is past the table's {num_rows} rows; "
                "offsets[i] is the table row of field i's value 0"
            )
        raise ValueError(
            f"offsets must not decrease when field_dims is not given (offsets[{i}] "
            f"= {start} > offsets[{i + 1}] = {int(starts[i + 1])}); pass field_dims "
            "for fields stored out of order"
        )
    dim = int(field_dims[i])
    if dim < 0:
        raise ValueError(f"field_dims[{i}] = {dim} is negative")
    raise ValueError(
        f"field_dims[{i}] = {dim} with offsets[{i}] = {start} needs table rows up to "
        f"{start + dim} but the table has {num_rows} rows; field_dims must match "
        "the table the offsets index"
    )


def prepare_lookup(table, indices, offsets, field_dims):
    """Shared validation of every lookup-based op; returns (indices, field_dims) after the
    offsets and bounds checks (indices may come back clamped in 'clamp' mode; 'off' skips both
    and returns field_dims as given, possibly None)."""
    check_lookup_inputs(table, indices, offsets, field_dims)
    if _bounds_check_mode == "off":  # nothing to check: no work, no host synchronisation
        return indices, field_dims
    implied = field_dims is None
    if implied:
        field_dims = field_dims_from_offsets(offsets, table.shape[0])
    if offsets.numel():
        check_offsets(offsets, field_dims, table.shape[0], implied)
    return apply_bounds_check(indices, field_dims), field_dims
