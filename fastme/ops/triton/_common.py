"""Helpers shared by the Triton kernels: launch sizes, dot precision, row arithmetic and the
accumulation target of table gradients."""

import functools
import os

import torch
import triton
import triton.language as tl

from fastme.ops import _policy
from fastme.ops._policy import acc_dtype, global_rows  # noqa: F401

# Default number of warps of the element-wise kernels (lookup, pooling).
NUM_WARPS = 4


def interpreted() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def pow2(n: int, lo: int = 1, hi: int | None = None) -> int:
    """next_power_of_2(n) clamped to [lo, hi]."""
    p = max(lo, triton.next_power_of_2(max(int(n), 1)))
    return p if hi is None else min(p, hi)


def autotune(gpu_configs, interpreter_config, key, block_args=("BLOCK_D",), size_arg="D"):
    """``triton.autotune`` over ``gpu_configs`` on a GPU; the single ``interpreter_config`` (no
    benchmarking, which needs CUDA) in the interpreter. Configs whose ``block_args`` exceed the
    padded ``size_arg`` are pruned, so small problems do not run mostly-masked tiles."""

    def prune(configs, named_args, **kwargs):
        limit = pow2(named_args[size_arg], lo=16)
        kept = [c for c in configs if all(c.kwargs[a] <= limit for a in block_args)]
        return kept or configs[:1]

    def decorator(fn):
        if interpreted():
            return triton.autotune([interpreter_config], key=key)(fn)
        return triton.autotune(
            gpu_configs, key=key, prune_configs_by={"early_config_prune": prune}
        )(fn)

    return decorator


def tl_dtype(dtype: torch.dtype):
    return {
        torch.float64: tl.float64,
        torch.float32: tl.float32,
        torch.bfloat16: tl.bfloat16,
        torch.float16: tl.float16,
    }[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot`` for operands of ``dtype``.

    float32 follows PyTorch's own switch, ``torch.set_float32_matmul_precision``: "highest" (the
    default) gives exact IEEE fp32 products, "high"/"medium" allow TF32 tensor cores, as they do
    for the reference's matmuls. Every other dtype is computed exactly ("ieee" is the only
    setting Triton accepts for float64; it is ignored for 16-bit operands).
    """
    if dtype == torch.float32 and _policy.tf32_allowed():
        return "tf32"
    return "ieee"


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's ``tl.dot`` multiplies 16-bit floats as raw integers; upcast them there."""
    return interpreted() and dtype in (torch.bfloat16, torch.float16)


def dot_meta(dtype: torch.dtype) -> dict:
    """Constexpr arguments every kernel with a ``tl.dot`` takes."""
    return dict(ACC=tl_dtype(acc_dtype(dtype)), PREC=dot_precision(dtype), UPCAST=upcast_dot(dtype))


def on_input_device(launcher):
    """Run ``launcher`` with its first tensor argument's CUDA device current: Triton launches on
    torch's current device (and its current stream), which need not be the tensors' device."""

    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        if device.type != "cuda":
            return launcher(*args, **kwargs)
        with torch.cuda.device(device):
            return launcher(*args, **kwargs)

    return wrapper


class RowGradTarget:
    """Where the backward kernels add table-row gradients, and how they become the dense
    [rows, *row_shape] gradient. Kernels add the gradient of (sample, field) pair p into row
    ``dest[p]`` of ``acc`` with atomic adds; ``finish()`` returns the table gradient.

    - float32/float64 tables: ``acc`` is the dense gradient itself and ``dest`` the global rows.
    - 16-bit tables: summing many contributions in 16 bits would lose precision and a float32
      copy of the whole table would double its footprint, so rows are summed in a compact float32
      buffer with one slot per *distinct* row of the batch (found by sorting, without a host
      sync) and written once, rounded, into the gradient.
    - deterministic mode (fastme.ops._policy.deterministic()): every pair gets its own slot, so
      the kernels' adds never collide, and the duplicates are then summed by torch's
      ``index_put_(accumulate=True)``, deterministic under torch.use_deterministic_algorithms.
    """

    def __init__(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        num_rows: int,
        row_shape,
        dtype: torch.dtype,
        deterministic: bool | None = None,
    ):
        device = indices.device
        self.num_rows, self.row_shape, self.dtype = num_rows, tuple(row_shape), dtype
        self.deterministic = _policy.deterministic() if deterministic is None else deterministic
        rows = global_rows(indices, offsets, num_rows).reshape(-1)
        pairs = rows.numel()
        self._compact = not _policy.sums_in_table_dtype(dtype)
        if self._compact:
            self._sorted_rows, perm = torch.sort(rows)
            is_first = torch.ones_like(self._sorted_rows, dtype=torch.bool)
            is_first[1:] = self._sorted_rows[1:] != self._sorted_rows[:-1]
            # slot of a sorted position = position of the first occurrence of its row
            pos = torch.arange(pairs, device=device)
            self._slot_sorted = torch.cummax(torch.where(is_first, pos, 0), 0).values
            self._slot = torch.empty_like(rows)
            self._slot[perm] = self._slot_sorted
            space_rows = pairs
        else:
            self._slot = rows
            space_rows = num_rows
        self._space = torch.zeros(
            (space_rows, *self.row_shape), dtype=acc_dtype(dtype), device=device
        )
        if self.deterministic:
            self.dest = torch.arange(pairs, device=device)
            self.acc = torch.zeros((pairs, *self.row_shape), dtype=acc_dtype(dtype), device=device)
        else:
            self.dest = self._slot
            self.acc = self._space

    def finish(self) -> torch.Tensor:
        """The dense [rows, *row_shape] gradient in the table's dtype."""
        if self.deterministic:
            self._space.index_put_((self._slot,), self.acc, accumulate=True)
        if not self._compact:
            return self._space
        grad = torch.zeros(
            (self.num_rows, *self.row_shape), dtype=self.dtype, device=self._space.device
        )
        # Every position of a row carries the same slot, so duplicates write identical values.
        grad[self._sorted_rows] = self._space[self._slot_sorted].to(self.dtype)
        return grad


@triton.jit
def load_rows(IDX, OFFS, pair, field, num_rows, mask):
    """Global table rows (int64) of (sample, field) pairs ``pair = b * N + field``.

    Clamped into [0, num_rows) so that no kernel ever reads outside the table, whatever the
    bounds-check mode let through. ``field`` may be a scalar or broadcastable to ``pair``.
    """
    idx = tl.load(IDX + pair, mask=mask, other=0).to(tl.int64)
    off = tl.load(OFFS + (field + 0 * pair), mask=mask, other=0).to(tl.int64)
    return tl.minimum(tl.maximum(idx + off, 0), num_rows - 1)


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with the dtype-dependent precision chosen on the host (see dot_precision)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    # out_dtype is explicit: Triton 3.6 defaults it to float32 and rejects a float64 accumulator
    # (3.9 infers it from acc).
    return tl.dot(a, b, acc, input_precision=PREC, out_dtype=acc.dtype)
