"""ROC AUC against a brute-force pairwise count; log loss against its definition."""

import itertools

import numpy as np
import pytest

from fastme.train.metrics import log_loss, log_loss_from_logits, roc_auc


def brute_force_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    # few distinct values -> many ties, some shared across classes
    scores = rng.integers(0, 1 + seed * 3, n).astype(np.float64) / 7
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_edge_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5
    assert roc_auc(np.array([0.0, 1.0], np.float32), np.array([1, 2], np.float32)) == 1.0
    with pytest.raises(ValueError, match="one class"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [np.nan, 0.3])
    with pytest.raises(ValueError, match="length"):
        roc_auc([0, 1], [0.3])


def test_auc_is_exact_on_a_large_input():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200_000)
    s = np.round(rng.normal(size=len(y)) + y * 0.5, 2)  # heavy ties
    # reference: for each positive, count negatives below plus half the tied ones
    neg = np.sort(s[y == 0])
    below = np.searchsorted(neg, s[y == 1], side="left")
    tied = np.searchsorted(neg, s[y == 1], side="right") - below
    expected = (below.sum() + 0.5 * tied.sum()) / ((y == 1).sum() * (y == 0).sum())
    assert roc_auc(y, s) == pytest.approx(expected, rel=1e-12)


def test_log_loss():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.8, 0.6, 0.3])
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert log_loss(y, p) == pytest.approx(expected)
    z = np.log(p / (1 - p))
    assert log_loss_from_logits(y, z) == pytest.approx(expected)
    # clipped, finite for confident mistakes; stable from logits
    assert np.isfinite(log_loss([1], [0.0]))
    assert log_loss_from_logits([1, 0], [-800.0, 800.0]) == pytest.approx(800.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([1], [1.5])
    with pytest.raises(ValueError, match="empty"):
        log_loss([], [])
