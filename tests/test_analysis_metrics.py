"""Matrix metrics of fastme.analysis: information abundance, spectra, principal-angle diversity."""

import math

import numpy as np
import pytest
import torch

from fastme.analysis import (
    compact_factor,
    embedding_diversity,
    expected_random_ia,
    information_abundance,
    normalized_information_abundance,
    principal_angle_cosines,
    random_factor,
    singular_values,
    spectrum,
)
from fastme.analysis.metrics import pearson


def test_ia_of_identity_is_k():
    for k in (1, 4, 10):
        assert float(information_abundance(torch.eye(k))) == pytest.approx(k)
    # a tall matrix with orthonormal columns: K equal singular values
    q, _ = torch.linalg.qr(torch.randn(500, 7, dtype=torch.float64))
    for method in ("exact", "gram"):
        assert float(information_abundance(q, method)) == pytest.approx(7, abs=1e-9)


def test_ia_of_rank_one_is_one():
    u, v = torch.randn(300, 1), torch.randn(1, 12)
    assert float(information_abundance(u @ v, "exact")) == pytest.approx(1.0, abs=1e-6)
    # the Gram route sees the tiny rounding singular values only at the ~1e-7 level
    assert float(information_abundance(u @ v, "gram")) == pytest.approx(1.0, abs=1e-5)


def test_ia_of_random_matrix_and_known_spectrum():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(2000, 10, generator=g, dtype=torch.float64)
    ia = float(information_abundance(e))
    # square-ish Gaussian matrices are not flat: sqrt(D) +- sqrt(K) spread, so a bit below K
    assert 8.0 < ia < 10.0
    # E = U diag(s) V^T with chosen s: IA = sum(s) / max(s)
    s = torch.tensor([5.0, 4.0, 1.0, 0.5], dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(50, 4, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    m = u @ torch.diag(s) @ v.T
    assert float(information_abundance(m)) == pytest.approx(10.5 / 5.0)
    assert spectrum(m).tolist() == pytest.approx([1.0, 0.8, 0.2, 0.1])
    assert singular_values(m).tolist() == pytest.approx(s.tolist())


def test_gram_method_agrees_with_exact_svd():
    g = torch.Generator().manual_seed(1)
    # collapsed spectrum spanning 4 orders of magnitude, float32 storage like a real table
    e = torch.randn(20000, 32, generator=g) * torch.logspace(0, -4, 32)
    exact = information_abundance(e, "exact")
    fast = information_abundance(e, "gram")
    auto = information_abundance(e)  # tall: takes the Gram route
    assert float(fast) == pytest.approx(float(exact), abs=1e-5)
    assert float(auto) == float(fast)
    sv_exact, sv_fast = singular_values(e, "exact"), singular_values(e, "gram")
    assert torch.allclose(sv_fast, sv_exact, rtol=0, atol=1e-6 * float(sv_exact[0]))


def test_batched_matches_loop_and_shapes():
    g = torch.Generator().manual_seed(2)
    stack = torch.randn(3, 2, 40, 5, generator=g)
    ia = information_abundance(stack)
    assert ia.shape == (3, 2)
    for a in range(3):
        for b in range(2):
            assert float(ia[a, b]) == pytest.approx(float(information_abundance(stack[a, b])))
    assert float(information_abundance(stack[0, 0].numpy())) == pytest.approx(float(ia[0, 0]))
    # wide matrices have min(D, K) singular values
    assert singular_values(torch.randn(3, 8)).shape == (3,)


def test_ia_edge_cases_and_errors():
    assert float(information_abundance(torch.zeros(5, 3))) == 0.0
    with pytest.raises(ValueError, match="matrix"):
        information_abundance(torch.ones(5))
    with pytest.raises(ValueError, match="method"):
        information_abundance(torch.ones(5, 2), method="fast")
    with pytest.raises(TypeError):
        information_abundance(torch.ones(5, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="at least one row"):
        information_abundance(torch.ones(0, 2))


def test_normalized_variants():
    e = torch.eye(6)
    assert float(normalized_information_abundance(e, "size")) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(3)
    r = torch.randn(3000, 8, generator=g)
    # a Gaussian matrix is its own baseline
    assert float(normalized_information_abundance(r, "random")) == pytest.approx(1.0, abs=0.03)
    collapsed = r * torch.tensor([1.0] + [0.01] * 7)
    assert float(normalized_information_abundance(collapsed, "random")) < 0.2
    assert expected_random_ia(3000, 8) == expected_random_ia(3000, 8)  # cached, deterministic
    with pytest.raises(ValueError, match="baseline"):
        normalized_information_abundance(e, "max")


def test_diversity_identical_and_orthogonal():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(100, 6, generator=g)
    assert embedding_diversity(a, a) == pytest.approx(0.0, abs=1e-9)
    # same column space, different basis: still 0
    mix = torch.randn(6, 6, generator=g)
    assert embedding_diversity(a, a @ mix) == pytest.approx(0.0, abs=1e-9)
    # orthogonal column spaces: 1
    q, _ = torch.linalg.qr(torch.randn(100, 12, generator=g, dtype=torch.float64))
    b, c = q[:, :6] @ torch.randn(6, 6, generator=g, dtype=torch.float64), q[:, 6:]
    assert embedding_diversity(b, c) == pytest.approx(1.0, abs=1e-9)
    # random tall sets are nearly orthogonal, not exactly
    assert 0.8 < embedding_diversity(torch.randn(5000, 4), torch.randn(5000, 4)) < 1.0


def test_principal_angles_of_known_planes():
    # span{e1} vs span{cos t e1 + sin t e2}: one principal angle t
    t = 0.3
    a = torch.tensor([[1.0], [0.0], [0.0]])
    b = torch.tensor([[math.cos(t)], [math.sin(t)], [0.0]])
    assert principal_angle_cosines(a, b).tolist() == pytest.approx([math.cos(t)])
    assert embedding_diversity(a, b) == pytest.approx(1 - math.cos(t))


def test_appendix_f_example():
    e1 = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    e2_single = e1.clone()
    e2_multi = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    assert principal_angle_cosines(e1, e2_single).tolist() == pytest.approx([1, 1])
    assert principal_angle_cosines(e1, e2_multi).tolist() == pytest.approx([1, 0], abs=1e-12)
    assert embedding_diversity(e1, e2_single) == pytest.approx(0.0, abs=1e-12)
    assert embedding_diversity(e1, e2_multi) == pytest.approx(0.5)
    single = torch.cat([e1, e2_single], 1)
    multi = torch.cat([e1, e2_multi], 1)
    assert float(information_abundance(single)) == pytest.approx(2.0)
    assert float(information_abundance(multi)) == pytest.approx(1 + math.sqrt(2))
    assert int(torch.linalg.matrix_rank(multi)) == 3


def test_diversity_errors():
    with pytest.raises(ValueError, match="same rows"):
        embedding_diversity(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="all-zero"):
        embedding_diversity(torch.zeros(5, 2), torch.randn(5, 2))


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        pearson([1], [1])


def test_compact_factor_keeps_gram_and_spectrum():
    g = torch.Generator().manual_seed(5)
    e = torch.randn(3000, 12, generator=g) * torch.logspace(0, -3, 12)
    for method in ("exact", "gram"):
        r = compact_factor(e, method)
        assert r.shape == (12, 12) and r.dtype == torch.float64
        e64 = e.double()
        assert torch.allclose(r.T @ r, e64.T @ e64, rtol=1e-9, atol=1e-9 * float((e64**2).sum()))
    # the chunked QR (several chunks) agrees with one QR, up to row signs
    r1 = compact_factor(e, "exact", chunk_rows=700)
    assert torch.allclose(torch.linalg.svdvals(r1), singular_values(e, "exact"), rtol=1e-9)
    small = torch.randn(4, 9, generator=g)
    assert torch.equal(compact_factor(small), small.double())
    assert compact_factor(torch.randn(2, 500, 6, generator=g), "gram").shape == (2, 6, 6)


def test_random_factor_matches_gaussian_matrices():
    g = torch.Generator().manual_seed(6)
    mc = np.mean(
        [float(information_abundance(torch.randn(400, 20, generator=g))) for _ in range(30)]
    )
    assert expected_random_ia(400, 20, samples=64) == pytest.approx(mc, rel=0.02)
    r = random_factor(400, 20, np.random.default_rng(0))
    assert r.shape == (20, 20) and torch.equal(r, torch.triu(r))
    assert random_factor(5, 20, np.random.default_rng(0)).shape == (5, 20)
