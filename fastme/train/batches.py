"""Batches of rows from a (memory-mapped) dataset, delivered on the training device.

Rows are gathered on the host from the shared base arrays. On CUDA the gather writes into a small
ring of pinned buffers and the copy to the device is non-blocking, so the host prepares the next
batch while the GPU still works on the previous one; a buffer is reused only after the copy that
last read it has finished (a CUDA event), which is the only wait and never a full sync.
"""

from __future__ import annotations

import numpy as np
import torch

_RING = 4  # pinned buffers in flight on CUDA


def batch_bounds(n: int, batch_size: int, merge_single_tail: bool = False) -> list[int]:
    """Start offsets of the batches of ``n`` rows, plus ``n``. With ``merge_single_tail`` a last
    batch of a single row joins the batch before it (BatchNorm cannot train on one sample; the
    row is still trained on, in a batch of ``batch_size + 1``)."""
    bounds = list(range(0, n, batch_size)) + [n]
    if merge_single_tail and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return bounds


def iterate_batches(
    data,
    rows: np.ndarray,
    batch_size: int,
    device: torch.device,
    sort_rows: bool = True,
    merge_single_tail: bool = False,
):
    """Yield (x int32 [b, N], y float32 [b]) on ``device`` for ``rows`` (row numbers into
    ``data.base_arrays()``), ``batch_size`` at a time in the given order (see
    :func:`batch_bounds` for ``merge_single_tail``).

    With ``sort_rows`` each batch's rows are read in ascending order: the batch holds the same
    rows (the loss and BatchNorm statistics do not depend on their order) and a memory-mapped file
    is read with far better locality.
    """
    x, y = data.base_arrays()
    n_fields = x.shape[1]
    cuda = device.type == "cuda"
    bounds = batch_bounds(len(rows), batch_size, merge_single_tail)
    capacity = max((b - a for a, b in zip(bounds, bounds[1:])), default=0)
    ring = []
    if cuda:
        ring = [
            (
                torch.empty((capacity, n_fields), dtype=torch.int32).pin_memory(),
                torch.empty(capacity, dtype=torch.float32).pin_memory(),
                torch.cuda.Event(),
            )
            for _ in range(_RING)
        ]
    for step, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        idx = rows[start:stop]
        if sort_rows:
            idx = np.sort(idx)
        b = len(idx)
        if not cuda:
            yield torch.from_numpy(np.asarray(x[idx])), torch.from_numpy(np.asarray(y[idx]))
            continue
        xb, yb, done = ring[step % _RING]
        done.synchronize()  # the copy that last read this buffer has finished
        # mode="clip" lets numpy write straight into ``out`` (rows are valid by construction)
        np.take(x, idx, axis=0, out=xb.numpy()[:b], mode="clip")
        np.take(y, idx, out=yb.numpy()[:b], mode="clip")
        xd = xb[:b].to(device, non_blocking=True)
        yd = yb[:b].to(device, non_blocking=True)
        done.record()
        yield xd, yd
