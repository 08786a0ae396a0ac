"""Bytes moved and FLOPs done by each benchmarked case: the roofline's numerators.

The fused ops' counts come from bench/op_cost.py (one place for them); this module adds the
models' training step and inference, with the same conventions (bench/README.md):
- Bytes are the *compulsory* traffic: every input read once, every output written once, no
  intermediate round-tripping through memory; a gathered row counts once per lookup; embedding
  gradients are dense.
- FLOPs count multiply and add separately; index arithmetic and elementwise activations are not
  counted; a backward pass costs its gradients' FLOPs without recomputing the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import op_cost
from torch import nn


@dataclass(frozen=True)
class Cost:
    bytes: float
    flops: float


def _direction(backward: bool) -> str:
    return "both" if backward else "forward"


def multi_embedding_lookup(B, N, M, K, rows, *, backward=False) -> Cost:
    d = _direction(backward)
    return Cost(
        op_cost.lookup_bytes(B, N, M, K, rows, direction=d),
        op_cost.lookup_flops(B, N, M, K, direction=d),
    )


def pooled_lookup(B, N, M, K, rows, *, weighted, backward=False) -> Cost:
    d = _direction(backward)
    return Cost(
        op_cost.pooled_lookup_bytes(B, N, M, K, rows, weighted=weighted, direction=d),
        op_cost.pooled_lookup_flops(B, N, M, K, weighted=weighted, direction=d),
    )


def cross_network(B, M, D, L, *, backward=False) -> Cost:
    d = _direction(backward)
    return Cost(
        op_cost.cross_network_bytes(B, M, D, L, direction=d),
        op_cost.cross_network_flops(B, M, D, L, direction=d),
    )


def lookup_cross_network(B, N, M, K, L, rows, *, backward=False) -> Cost:
    d = _direction(backward)
    return Cost(
        op_cost.lookup_cross_network_bytes(B, N, M, K, L, rows, direction=d),
        op_cost.lookup_cross_network_flops(B, N, M, K, L, direction=d),
    )


def _linear_weights(model: nn.Module) -> int:
    """Weights of every Linear / per-set Linear (2 FLOPs each per example in the forward pass)."""
    from fastme.models.layers import SetLinear

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, SetLinear)))


def model_step(model, batch: int, *, train: bool, elem=4, index=8) -> Cost:
    """One inference forward, or one training step (forward, backward, Adam), of ME-DCNv2,
    ME-NFwFM or ME-DNN on a [batch, N] index batch."""
    from fastme.models import DCNv2, DNN, NFwFM

    if not isinstance(model, (DCNv2, NFwFM, DNN)):
        raise ValueError(f"no cost model for {type(model).__name__}; expected DCNv2, NFwFM or DNN")
    B, N, M, K = batch, model.num_fields, model.num_sets, model.embed_dim
    rows = sum(model.field_dims)
    fwd_flops = 2 * B * _linear_weights(model)
    if isinstance(model, DCNv2):
        fwd_flops += op_cost.cross_network_flops(B, M, N * K, model.cross_weight.shape[0])
    elif isinstance(model, NFwFM):
        fwd_flops += op_cost.pooled_lookup_flops(B, N, M, K, weighted=True)
    params = sum(p.numel() for p in model.parameters())
    dense_params = params - rows * M * K
    gathered = B * N * M * K * elem
    # forward: indices, gathered rows, every non-embedding weight once, logits out
    fwd_bytes = B * N * index + gathered + dense_params * elem + B * elem
    if not train:
        return Cost(fwd_bytes, fwd_flops)
    # backward: grad of the gathered rows read once, every parameter's (dense) gradient written
    # once; Adam: read param, grad, exp_avg, exp_avg_sq and write param, exp_avg, exp_avg_sq
    train_bytes = fwd_bytes + gathered + params * elem + 7 * params * elem
    return Cost(train_bytes, 3 * fwd_flops)  # backward = 2x forward; Adam's FLOPs not counted
