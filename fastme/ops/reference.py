"""Eager reference implementations: the ground truth every fused kernel is tested against.

Plain PyTorch, written for clarity, correct in any float dtype (tests use float64). No validation
here: the public ops in ``fastme.ops`` validate, then dispatch to these or to a kernel.

Layouts (see docs/ops.md):
  table    [rows, M, K]   all M sets of one feature value contiguous; rows = sum(field_dims)
  indices  [B, N]         per-field local indices, 0 <= indices[:, i] < field_dims[i]
  offsets  [N]            exclusive cumsum of field_dims: global row = offsets[i] + indices[:, i]
  emb      [B, M, N, K]   gathered embeddings; emb[:, m].reshape(B, N*K) is set m's field-major
                          flat vector (field 0's K values first), which the per-set modules consume
"""

from __future__ import annotations

import torch


def multi_embedding_lookup(
    table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Grouped multi-set lookup: [rows, M, K] x [B, N] -> [B, M, N, K]."""
    rows = indices.long() + offsets.long().unsqueeze(0)  # [B, N]
    b, n = rows.shape
    rows_, m, k = table.shape
    # index_select on the [rows, M*K] view gathers whole rows; faster than advanced indexing.
    gathered = table.reshape(rows_, m * k).index_select(0, rows.reshape(-1))
    return gathered.view(b, n, m, k).permute(0, 2, 1, 3).contiguous()  # -> [B, M, N, K]


class _SparseGradGather(torch.autograd.Function):
    """``table.reshape(rows, M*K).index_select(0, rows)`` whose backward hands the table a
    sparse gradient: a coalesced COO tensor [rows, M, K] holding only the touched rows (unique,
    sorted, duplicates summed) instead of a dense table-sized gradient. ``F.embedding(sparse=True)``
    cannot serve: it needs a 2-D weight, and the [rows, M*K] view's backward cannot reshape a
    sparse gradient."""

    @staticmethod
    def forward(ctx, table, rows):
        ctx.save_for_backward(rows)
        ctx.table_shape = table.shape
        num_rows, m, k = table.shape
        return table.reshape(num_rows, m * k).index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        num_rows, m, k = ctx.table_shape
        # torch's coalesce sorts the rows and sums duplicates in a fixed order: deterministic on
        # CPU and CUDA (index_add_ would use atomics on CUDA).
        sparse = torch.sparse_coo_tensor(
            rows.unsqueeze(0), grad.reshape(-1, m, k), ctx.table_shape, check_invariants=False
        ).coalesce()
        return sparse, None


def multi_embedding_lookup_sparse_grad(
    table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """:func:`multi_embedding_lookup` (same values) whose gradient with respect to ``table`` is a
    sparse COO tensor of the touched rows (see :class:`_SparseGradGather`)."""
    rows = indices.long() + offsets.long().unsqueeze(0)  # [B, N]
    b, n = rows.shape
    _, m, k = table.shape
    gathered = _SparseGradGather.apply(table, rows.reshape(-1))
    return gathered.view(b, n, m, k).permute(0, 2, 1, 3).contiguous()  # -> [B, M, N, K]


def fm_pooling(emb: torch.Tensor) -> torch.Tensor:
    """FM pooling per set: 0.5 * ((sum_i e_i)^2 - sum_i e_i^2), [B, M, N, K] -> [B, M, K]."""
    total = emb.sum(dim=2)
    return 0.5 * (total * total - (emb * emb).sum(dim=2))


def fwfm_pooling(emb: torch.Tensor, field_weights: torch.Tensor) -> torch.Tensor:
    """Field-weighted pooling per set: sum_{i,j} r_ij^(m) e_i ⊙ e_j, [B, M, N, K] -> [B, M, K].

    ``field_weights`` is [M, N, N]. The sum runs over all ordered pairs including i == j, as in the
    paper's reference code (NFwFM keeps the self-terms r_ii e_i^2; an off-diagonal pair weighs
    r_ij + r_ji). The strictly-upper-triangle FwFM of Pan et al. is the same op with r masked.
    """
    return torch.einsum("bmik,mij,bmjk->bmk", emb, field_weights, emb)


def cross_network(x0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-set full-rank DCNv2 cross network, batched over sets.

    x0 [B, M, D] (D = N*K), weight [L, M, D, D] (nn.Linear convention: out x in), bias [L, M, D].
    x_{l+1} = x_0 ⊙ (W_l^(m) x_l + b_l^(m)) + x_l for l = 0..L-1; returns x_L [B, M, D].
    Block rows i*K:(i+1)*K, columns j*K:(j+1)*K of W_l^(m) is the paper's W_{j->i}.
    """
    layers, sets, d = weight.shape[0], weight.shape[1], weight.shape[-1]
    if sets == 1:
        # One set (SE): 2-D matmuls, as nn.Linear. Their backward writes each weight gradient in
        # the weight's own layout; bmm's is a transposed view, and stacking L of those into the
        # [L, 1, D, D] gradient is then a strided copy of every weight (~15% of fwd+bwd at D=1560).
        b0 = x0.shape[0]
        x0 = x0.reshape(b0, d)
        x = x0
        for w, b in zip(weight.reshape(layers, d, d).unbind(0), bias.reshape(layers, d).unbind(0)):
            x = x0 * torch.nn.functional.linear(x, w, b) + x
        return x.reshape(b0, 1, d)
    x = x0
    # unbind, not weight[layer]: the backward of one unbind stacks the L gradients once, where
    # L index ops would each zero-fill and copy a whole [L, M, D, D] gradient.
    for w, b in zip(weight.unbind(0), bias.unbind(0)):
        x = x0 * (torch.einsum("bmd,med->bme", x, w) + b) + x
    return x


# ---- fused-op references: the composition the fused kernels must equal ---------------------------


def pooled_lookup(table, indices, offsets, field_weights=None):
    """Lookup then FM pooling (field_weights None) or field-weighted pooling: -> [B, M, K]."""
    emb = multi_embedding_lookup(table, indices, offsets)
    return fm_pooling(emb) if field_weights is None else fwfm_pooling(emb, field_weights)


def lookup_cross_network(table, indices, offsets, weight, bias):
    """Lookup then the per-set cross network on the flattened sets: -> [B, M, N*K]."""
    emb = multi_embedding_lookup(table, indices, offsets)
    b, m, n, k = emb.shape
    return cross_network(emb.reshape(b, m, n * k), weight, bias)


def set_projection_mean(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """mean_m relu(x[:, m] W_m^T + b_m): [B, M, in] x [M, out, in] x [M, out] -> [B, out]. One
    ``addmm`` per set on x's strided rows; the sets summed in float32 (float64 for float64) and
    rounded once. Without gradients the ReLU and the sum run in place."""
    grad = torch.is_grad_enabled()
    relu = torch.relu if grad else torch.relu_
    outputs = [relu(torch.addmm(bias[m], x[:, m], weight[m].t())) for m in range(len(weight))]
    total = outputs[0].to(torch.promote_types(outputs[0].dtype, torch.float32))
    if grad:
        total = torch.stack([total, *outputs[1:]]).sum(0) if len(outputs) > 1 else total
        return (total / len(outputs)).to(outputs[0].dtype)
    for y in outputs[1:]:
        total.add_(y)
    return total.div_(len(outputs)).to(outputs[0].dtype)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) held in int64, without int64 overflow."""
    low, high = c & 0xFFFF, c >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """kernels/cpu/dropout_kernels.h's mix32 on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def dropout_bits(seed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The mask bits (uint32 values in int64) of elements ``index`` for an int64 ``seed``: two
    keyed rounds of a 32-bit mixer (kernels/cpu/dropout_kernels.h's dropout_bits)."""
    seed = seed.to(torch.int64)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    low, high = index & _MASK32, (index >> 32) & _MASK32
    return _mix32((_mix32(low ^ k0) + (k1 ^ high)) & _MASK32)


def dropout_threshold(p: float) -> int:
    """Element i is kept where its bits are >= floor(p * 2^32): probability 1 - p."""
    return int(p * 4294967296.0)


def dropout(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    """x * s, s = 1 / (1 - p) where element i's mask bits (row-major i) are >= the threshold
    and 0 elsewhere; the product in float32 (float64 for float64), rounded once to x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    index = torch.arange(x.numel(), device=x.device)
    keep = dropout_bits(seed.to(x.device), index) >= dropout_threshold(p)
    scale = keep.to(acc).mul_(1.0 / (1.0 - p)).view(x.shape)
    return (x.to(acc) * scale).to(x.dtype)
