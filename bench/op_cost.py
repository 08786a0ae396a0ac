"""Bytes each fused op must move and FLOPs it must do: the numerators of achieved GB/s and TFLOP/s.

Conventions (docs/ops.md, "Cost model"):
- Bytes are the *compulsory* traffic of an ideal fused kernel: every input read once, every output
  written once, no intermediate round-tripping through memory. A gathered row counts once per
  lookup (B*N row reads) even when the same row repeats. Table gradients are dense, so a backward
  pass writes the whole [rows, M, K] gradient once.
- FLOPs count multiply and add separately; index arithmetic is not counted. A backward pass
  counts the FLOPs of its gradients, without recomputation.

Every function takes ``direction``: "forward", "backward" or "both" (their sum). Shapes: B batch,
N fields, M sets, K embedding size, D = N*K, L cross layers, ``rows`` = table rows
(sum of field cardinalities); ``elem`` is the float size in bytes, ``index`` the index size.
"""

from __future__ import annotations

DIRECTIONS = ("forward", "backward", "both")


def _pick(direction: str, forward: float, backward: float) -> float:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return {"forward": forward, "backward": backward, "both": forward + backward}[direction]


# ---- multi_embedding_lookup ---------------------------------------------------------------------


def lookup_bytes(B, N, M, K, rows, *, direction="forward", elem=4, index=8) -> float:
    """Forward: read indices and offsets, gather B*N rows of M*K, write [B, M, N, K].
    Backward: read indices and the output gradient, write the dense table gradient."""
    gathered = B * N * M * K * elem
    fwd = B * N * index + N * index + 2 * gathered
    bwd = B * N * index + gathered + rows * M * K * elem
    return _pick(direction, fwd, bwd)


def lookup_flops(B, N, M, K, *, direction="forward") -> float:
    """The forward only copies; the backward adds every gathered gradient into its row."""
    return _pick(direction, 0, B * N * M * K)


# ---- pooled_lookup ------------------------------------------------------------------------------


def pooled_lookup_bytes(
    B, N, M, K, rows, *, weighted, direction="forward", elem=4, index=8
) -> float:
    """FM (``weighted=False``) or field-weighted pooling fused with the lookup, -> [B, M, K].

    Forward: indices, B*N gathered rows, the [M, N, N] weights, the output. Backward: indices,
    output gradient, the rows gathered again, the weights read and their gradient written, the
    dense table gradient."""
    gathered = B * N * M * K * elem
    out = B * M * K * elem
    pairs = M * N * N * elem if weighted else 0
    fwd = B * N * index + N * index + gathered + pairs + out
    bwd = B * N * index + out + gathered + 2 * pairs + rows * M * K * elem
    return _pick(direction, fwd, bwd)


def pooled_lookup_flops(B, N, M, K, *, weighted, direction="forward") -> float:
    """Per pooled value (b, m, k). FM forward: sum (N), sum of squares (2N), 0.5*(s*s - q) (3);
    backward g*(s - e_i) (3N). FwFM forward: t = R e (2N^2), sum_i e_i t_i (2N); backward:
    grad e = g*(R + R^T) e (2N^2 + N) and grad R = sum g e_i e_j (2N^2 + N)."""
    per_value = B * M * K
    if weighted:
        return _pick(direction, per_value * (2 * N * N + 2 * N), per_value * (4 * N * N + 2 * N))
    return _pick(direction, per_value * (3 * N + 3), per_value * 3 * N)


# ---- cross_network / lookup_cross_network -------------------------------------------------------


def cross_network_flops(B, M, D, L, *, direction="forward") -> float:
    """Forward per layer and set: W x (2D^2 per sample), bias, product with x0, residual (3D).
    Backward per layer: u W (2D^2), grad W (2D^2), elementwise chain (6D)."""
    return _pick(direction, L * B * M * (2 * D * D + 3 * D), L * B * M * (4 * D * D + 6 * D))


def cross_network_bytes(B, M, D, L, *, direction="forward", elem=4) -> float:
    """Forward: read x0 and the parameters, write x_L. Backward: read x0, the output gradient and
    the parameters, write grad x0 and the parameter gradients."""
    params = (L * M * D * D + L * M * D) * elem
    act = B * M * D * elem
    return _pick(direction, 2 * act + params, 3 * act + 2 * params)


def lookup_cross_network_bytes(
    B, N, M, K, L, rows, *, direction="forward", elem=4, index=8
) -> float:
    """Lookup fused in front of the cross network: x0 is gathered instead of read, and the
    backward writes the dense table gradient instead of grad x0."""
    D = N * K
    gathered = B * N * M * K * elem
    params = (L * M * D * D + L * M * D) * elem
    act = B * M * D * elem
    fwd = B * N * index + N * index + gathered + params + act
    bwd = B * N * index + act + gathered + 2 * params + rows * M * K * elem
    return _pick(direction, fwd, bwd)


def lookup_cross_network_flops(B, N, M, K, L, *, direction="forward") -> float:
    return cross_network_flops(B, M, N * K, L, direction=direction)


# ---- what the Triton kernels actually move on top (docs/ops.md) ---------------------------------


def cross_network_saved_bytes(B, M, D, L, *, elem=4, fused_lookup=False) -> float:
    """Activation memory the Triton cross network keeps for its backward: x_1..x_{L-1}, plus the
    gathered x_0 when the lookup is fused in (the unfused op's x_0 is its input)."""
    return (L - 1 + (1 if fused_lookup else 0)) * B * M * D * elem if L > 0 else 0
