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

import math

import torch
import torch.nn.functional as F


def multi_embedding_lookup(table: torch.Tensor, indices: torch.Tensor,
                           offsets: torch.Tensor) -> torch.Tensor:
    """Grouped multi-set lookup: [rows, M, K] x [B, N] -> [B, M, N, K]."""
    rows = indices.long() + offsets.long().unsqueeze(0)  # [B, N]
    b, n = rows.shape
    rows_, m, k = table.shape
    # index_select on the [rows, M*K] view gathers whole rows; faster than advanced indexing.
    gathered = table.reshape(rows_, m * k).index_select(0, rows.reshape(-1))
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
    x = x0
    for layer in range(weight.shape[0]):
        x = x0 * (torch.einsum("bmd,med->bme", x, weight[layer]) + bias[layer]) + x
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


# ---- per-set interaction modules of the other backbones (functional, batched over sets) ----------

def inner_products(emb: torch.Tensor) -> torch.Tensor:
    """IPNN inner-product layer: all <e_i, e_j> for i < j, i the outer loop. -> [B, M, N(N-1)/2]."""
    n = emb.shape[2]
    gram = torch.einsum("bmik,bmjk->bmij", emb, emb)
    rows, cols = torch.triu_indices(n, n, offset=1, device=emb.device)
    return gram[:, :, rows, cols]


def cin(emb: torch.Tensor, weights, biases) -> torch.Tensor:
    """xDeepFM Compressed Interaction Network, per set, without split-half.

    emb [B, M, N, K]; layer l has weights[l] [M, C_l, N*C_{l-1}] and biases[l] [M, C_l] (a 1x1
    convolution per set), C_0 = N. H_l = ReLU(conv(outer(X_0, H_{l-1}) per dimension k)).
    Returns the sum over k of every layer's maps, concatenated: [B, M, sum_l C_l].
    """
    b, m, n, k = emb.shape
    h = emb
    pooled = []
    for w, bias in zip(weights, biases):
        z = torch.einsum("bmik,bmjk->bmijk", emb, h).reshape(b, m, n * h.shape[2], k)
        h = F.relu(torch.einsum("bmck,moc->bmok", z, w) + bias.unsqueeze(-1))
        pooled.append(h.sum(dim=-1))
    return torch.cat(pooled, dim=-1)


def set_self_attention(x: torch.Tensor, in_weight, in_bias, out_weight, out_bias,
                       num_heads: int) -> torch.Tensor:
    """Multi-head self-attention over the field axis, one independent attention per set.

    x [B, M, N, H]; in_weight [M, 3H, H], in_bias [M, 3H]; out_weight [M, H, H], out_bias [M, H].
    Same maths as torch.nn.MultiheadAttention (scaled dot product, no dropout), batched over sets.
    """
    b, m, n, h = x.shape
    qkv = torch.einsum("bmnh,mgh->bmng", x, in_weight) + in_bias.unsqueeze(1)
    q, k, v = qkv.reshape(b, m, n, 3, num_heads, h // num_heads).unbind(dim=3)  # [B,M,N,heads,dh]
    scores = torch.einsum("bmihd,bmjhd->bmhij", q, k) / math.sqrt(h // num_heads)
    attn = torch.softmax(scores, dim=-1)
    out = torch.einsum("bmhij,bmjhd->bmihd", attn, v).reshape(b, m, n, h)
    return torch.einsum("bmnh,mgh->bmng", out, out_weight) + out_bias.unsqueeze(1)


def bilinear_fusion(o1, o2, w1, b1, w2, b2, w12) -> torch.Tensor:
    """FinalMLP single-head fusion: w1·o1 + b1 + w2·o2 + b2 + o1^T W12 o2. o1, o2 [B, H] -> [B]."""
    return o1 @ w1 + b1 + o2 @ w2 + b2 + torch.einsum("bi,ij,bj->b", o1, w12, o2)
