"""Bytes moved and FLOPs done by each benchmarked case: the roofline's numerators.

Conventions (bench/README.md explains them with the formulas):
- Bytes are the *compulsory* traffic of an ideal fused kernel: every input read once, every output
  written once, no intermediate tensor round-tripping through memory. A gathered row counts once per
  lookup (B*N row reads), whether or not the same row was read before. Gradients of the embedding
  table are dense (as in the models and the reference code), so a backward pass writes the whole
  table gradient once.
- FLOPs count multiply and add separately (a multiply-add is 2 FLOPs); index arithmetic and
  elementwise activations are not counted. A backward pass costs the FLOPs of its gradients, without
  recomputing the forward.

Shapes: B batch, N fields, M embedding sets, K embedding size, D = N*K, L cross layers,
``rows`` = sum of the field cardinalities. ``elem`` is the float size, ``index`` the index size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Cost:
    bytes: float
    flops: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.bytes + other.bytes, self.flops + other.flops)


def multi_embedding_lookup(B, N, M, K, rows, *, backward=False, elem=4, index=8) -> Cost:
    """[rows, M, K] table, [B, N] indices -> [B, M, N, K]."""
    gathered = B * N * M * K * elem
    fwd = Cost(B * N * index + N * index + 2 * gathered, 0)
    if not backward:
        return fwd
    # read grad_out and the indices, write the dense table gradient; one add per gathered value
    bwd = Cost(B * N * index + gathered + rows * M * K * elem, B * N * M * K)
    return fwd + bwd


def pooled_lookup(B, N, M, K, rows, *, weighted, backward=False, elem=4, index=8) -> Cost:
    """Lookup + FM pooling (``weighted=False``) or field-weighted pooling -> [B, M, K]."""
    gathered = B * N * M * K * elem
    out = B * M * K * elem
    pairs = M * N * N * elem if weighted else 0
    per_value = B * M * K  # one pooled value per (b, m, k)
    # FM: sum (N), sum of squares (2N), 0.5*(s*s - q) (3). FwFM: t_i = sum_j r_ij e_j (2N^2), then
    # sum_i e_i t_i (2N).
    fwd_flops = per_value * ((2 * N * N + 2 * N) if weighted else (3 * N + 3))
    fwd = Cost(B * N * index + N * index + gathered + pairs + out, fwd_flops)
    if not backward:
        return fwd
    # grad e_i: FM g*(s - e_i) (3N); FwFM g * sum_j (r_ij + r_ji) e_j (2N^2 + N) plus
    # grad r_ij = sum_{b,k} g e_i e_j (2N^2 + N).
    bwd_flops = per_value * ((4 * N * N + 2 * N) if weighted else 3 * N)
    bwd = Cost(B * N * index + out + gathered + 2 * pairs + rows * M * K * elem, bwd_flops)
    return fwd + bwd


def _cross_flops(B, M, D, L, backward):
    # per layer and set: W x (2 D^2 per example) + bias, product with x0, residual (3 D)
    fwd = L * B * M * (2 * D * D + 3 * D)
    # per layer: grad through W^T (2 D^2), grad W (2 D^2), elementwise chain (6 D)
    bwd = L * B * M * (4 * D * D + 6 * D)
    return fwd + (bwd if backward else 0)


def cross_network(B, M, D, L, *, backward=False, elem=4) -> Cost:
    """x0 [B, M, D], weight [L, M, D, D], bias [L, M, D] -> [B, M, D]."""
    params = (L * M * D * D + L * M * D) * elem
    act = B * M * D * elem
    fwd_bytes = 2 * act + params
    # read x0, grad_out, the parameters; write grad x0 and the parameter gradients
    bwd_bytes = 3 * act + 2 * params
    return Cost(fwd_bytes + (bwd_bytes if backward else 0), _cross_flops(B, M, D, L, backward))


def lookup_cross_network(B, N, M, K, L, rows, *, backward=False, elem=4, index=8) -> Cost:
    """Lookup fused in front of the cross network: x0 is gathered, never stored."""
    D = N * K
    gathered = B * N * M * K * elem
    params = (L * M * D * D + L * M * D) * elem
    act = B * M * D * elem
    fwd_bytes = B * N * index + N * index + gathered + params + act
    # read indices, grad_out, re-gather x0, read the parameters; write the parameter gradients
    # and the dense table gradient
    bwd_bytes = B * N * index + act + gathered + 2 * params + rows * M * K * elem
    return Cost(fwd_bytes + (bwd_bytes if backward else 0), _cross_flops(B, M, D, L, backward))


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
        fwd_flops += _cross_flops(B, M, N * K, model.cross_weight.shape[0], backward=False)
    elif isinstance(model, NFwFM):
        fwd_flops += B * M * K * (2 * N * N + 2 * N)
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
