"""The per-set interaction primitives of the backbones that have no fused kernel: IPNN's inner
products, xDeepFM's CIN, AutoInt's set self-attention and FinalMLP's bilinear fusion. Functional
and batched over the M embedding sets (shapes as in fastme/ops/reference.py); the modules in
fastme/models/ hold their parameters."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def set_self_attention(
    x: torch.Tensor, in_weight, in_bias, out_weight, out_bias, num_heads: int
) -> torch.Tensor:
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
