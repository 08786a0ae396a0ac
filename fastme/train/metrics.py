"""Evaluation metrics: exact ROC AUC (tie-aware) and log loss, in numpy."""

from __future__ import annotations

import numpy as np


def _as_1d(name: str, values, dtype) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _binary_labels(labels) -> np.ndarray:
    y = _as_1d("labels", labels, np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    return y


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic).

    Exact for any input: tied scores get their average rank, and the rank sum is kept in integers
    (ranks doubled so that averages of tied ranks stay whole). O(n log n).
    """
    y = _binary_labels(labels)
    s = _as_1d("scores", scores, np.float64)
    if len(s) != len(y):
        raise ValueError(f"labels and scores differ in length ({len(y)} vs {len(s)})")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "ROC AUC is undefined when the labels hold only one class "
            f"({n_pos} positives, {n_neg} negatives)"
        )
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # Tie groups: [starts[g], ends[g]) in sorted order share one score.
    boundaries = np.flatnonzero(sorted_s[1:] != sorted_s[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    # 1-based ranks start+1 .. end average to (start + 1 + end) / 2; doubled: start + 1 + end.
    doubled_rank = np.repeat(starts + 1 + ends, ends - starts)
    pos_rank_sum2 = int(doubled_rank[y[order] == 1].sum())
    u2 = pos_rank_sum2 - n_pos * (n_pos + 1)  # 2 * U
    return u2 / (2.0 * n_pos * n_neg)


def _labels_and(name: str, labels, values) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels and the float64 values scored against them, of one non-zero length."""
    y = _binary_labels(labels)
    v = _as_1d(name, values, np.float64)
    if len(v) != len(y):
        raise ValueError(f"labels and {name} differ in length ({len(y)} vs {len(v)})")
    if len(v) == 0:
        raise ValueError("log loss of an empty set is undefined")
    return y, v


def log_loss(labels, probs, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy -[y log p + (1 - y) log(1 - p)] (natural log), with p clipped to
    [eps, 1 - eps] so that a confident mistake costs a large finite amount."""
    y, p = _labels_and("probs", labels, probs)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("probs must lie in [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def log_loss_from_logits(labels, logits) -> float:
    """:func:`log_loss` of sigmoid(logits), computed stably from the logits (no clipping needed):
    softplus(z) - y z."""
    y, z = _labels_and("logits", labels, logits)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))
