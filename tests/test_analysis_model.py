"""Model-level collapse analysis: per-field IA, seen rows, diversity, DCNv2 sub-embeddings."""

import math

import numpy as np
import pytest
import torch

from fastme.analysis import (
    FieldFactors,
    concat_sets,
    embedding_diversity,
    field_information_abundance,
    field_spectra,
    information_abundance,
    interaction_pattern,
    model_diversity,
    random_diversity,
    seen_masks,
    set_diversity,
    split_sets,
    sub_embedding_analysis,
    sub_embedding_correlation,
    sub_embedding_information_abundance,
)
from fastme.models import DCNv2, build

FIELD_DIMS = [3, 40, 7, 120]


def _model(name="dcnv2", scale=2, multi=True, seed=0, **options):
    torch.manual_seed(seed)
    return build(name, FIELD_DIMS, scale, multi, backend="reference", hidden_dim=8, **options)


def test_field_ia_concatenates_sets():
    model = _model()  # 2 sets of K = 10
    ia = field_information_abundance(model)
    assert len(ia) == len(FIELD_DIMS) and all(isinstance(v, float) for v in ia)
    tables = model.embedding_tables()
    for i, t in enumerate(tables):
        manual = torch.cat([t[0], t[1]], dim=1)  # [D_i, 2K]
        assert ia[i] == pytest.approx(float(information_abundance(manual)))
        assert torch.equal(concat_sets(t), manual)
    per_set = field_information_abundance(model, per_set=True)
    assert per_set[1][1] == pytest.approx(float(information_abundance(tables[1][1])))
    # an SE model of the same width gives the same kind of numbers
    assert len(field_information_abundance(_model(multi=False))) == len(FIELD_DIMS)
    spectra = field_spectra(model)
    assert spectra[0].shape == (3,) and spectra[3].shape == (20,)
    assert spectra[3][0] == pytest.approx(1.0) and np.all(np.diff(spectra[3]) <= 1e-12)


def test_field_ia_seen_rows():
    model = _model(multi=False, scale=1)
    x = np.array([[0, 1, 2, 3], [1, 1, 2, 5], [0, 39, 6, 119]], dtype=np.int32)
    masks = seen_masks(x, FIELD_DIMS)
    assert masks[0].tolist() == [True, True, False]
    assert int(masks[1].sum()) == 2 and int(masks[3].sum()) == 3
    ia = field_information_abundance(model, seen_rows=x)
    t = model.embedding_tables()[1][0]
    assert ia[1] == pytest.approx(float(information_abundance(t[[1, 39]])))
    # boolean masks and an object with .x give the same
    assert field_information_abundance(model, seen_rows=masks) == ia

    class Data:
        pass

    d = Data()
    d.x = x
    assert field_information_abundance(model, seen_rows=d) == ia
    none_seen = [torch.zeros(n, dtype=torch.bool) for n in FIELD_DIMS]
    assert all(math.isnan(v) for v in field_information_abundance(model, seen_rows=none_seen))
    with pytest.raises(ValueError, match="outside"):
        seen_masks(np.array([[3, 0, 0, 0]]), FIELD_DIMS)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        seen_masks(np.zeros((2, 3), dtype=np.int64), FIELD_DIMS)
    with pytest.raises(TypeError):
        seen_masks("rows", FIELD_DIMS)


def test_seen_rows_from_ctrdata_subset():
    data_mod = pytest.importorskip("fastme.data")
    x = np.array([[0, 1, 2, 3], [1, 1, 2, 5], [2, 39, 6, 119], [0, 0, 0, 0]], dtype=np.int32)
    data = data_mod.CTRData(x, np.zeros(4, dtype=np.float32), FIELD_DIMS)
    sub = data.subset([1, 3])
    masks = seen_masks(sub, FIELD_DIMS)
    assert torch.nonzero(masks[0]).flatten().tolist() == [0, 1]
    assert torch.nonzero(masks[3]).flatten().tolist() == [0, 5]


def test_diversity_of_model_and_baselines():
    model = _model(scale=3)
    result = model_diversity(model)
    assert len(result["per_field"]) == len(FIELD_DIMS)
    # field 0 has 3 rows < K: every set spans all of R^3, so the sets cannot differ
    assert result["per_field"][0] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < result["mean"] < 1.0
    # identical sets -> 0; split of an SE model; random baseline is high for tall fields
    same = torch.randn(50, 4).expand(3, 50, 4)
    assert set_diversity(same) == pytest.approx(0.0, abs=1e-9)
    se = _model(multi=False, scale=2)
    with pytest.raises(ValueError, match="split"):
        model_diversity(se)
    assert len(model_diversity(se, split=2)["per_field"]) == len(FIELD_DIMS)
    rnd = random_diversity([5000], num_sets=2, embed_dim=4)
    assert rnd["mean"] > 0.9
    assert split_sets(torch.arange(12.0).reshape(2, 6), 3)[1].tolist() == [[2, 3], [8, 9]]
    with pytest.raises(ValueError, match="num_sets"):
        split_sets(torch.ones(2, 6), 4)


def test_field_factors_reuse_and_methods():
    torch.manual_seed(1)
    model = build("dcnv2", [3, 2000, 50], 3, True, backend="reference", hidden_dim=8)
    ff = FieldFactors(model)
    assert [f.shape for f in ff.factors] == [(3, 30), (30, 30), (30, 30)]
    assert field_information_abundance(ff) == pytest.approx(field_information_abundance(model))
    fast = FieldFactors(model, method="gram")
    exact = FieldFactors(model, method="exact")
    assert field_information_abundance(fast) == pytest.approx(
        field_information_abundance(exact), abs=1e-6
    )
    assert model_diversity(fast)["per_field"] == pytest.approx(
        model_diversity(exact)["per_field"], abs=1e-6
    )
    assert torch.allclose(
        sub_embedding_information_abundance(model, factors=fast),
        sub_embedding_information_abundance(model, factors=exact),
        atol=1e-6,
    )
    # the diversity on factors equals the diversity on the raw sets
    sets = model.embedding_tables()[1]
    pairs = [embedding_diversity(sets[a], sets[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert set_diversity(sets) == pytest.approx(np.mean(pairs), abs=1e-9)
    assert model_diversity(model)["per_field"][1] == pytest.approx(np.mean(pairs), abs=1e-9)
    with pytest.raises(ValueError, match="seen_rows"):
        field_information_abundance(ff, seen_rows=np.zeros((1, 3), dtype=np.int64))


def _hand_model(num_sets=1):
    """N = 2 fields (3 and 2 values), K = 2, with hand-set embeddings and first cross layer."""
    model = DCNv2([3, 2], embed_dim=2, num_sets=num_sets, backend="reference", hidden_dim=4)
    e0 = torch.tensor([[1.0, 0], [0, 1], [1, 1]])
    e1 = torch.tensor([[2.0, 0], [0, 1]])
    w = torch.zeros(4, 4)
    # block W[j*K:(j+1)*K, i*K:(i+1)*K] is W_{i->j}
    w[0:2, 0:2] = torch.eye(2)  # W_{0->0}
    w[2:4, 0:2] = torch.tensor([[1.0, 0], [0, 0]])  # W_{0->1}: rank 1
    w[0:2, 2:4] = torch.tensor([[1.0, 0], [0, 2]])  # W_{1->0}
    w[2:4, 2:4] = torch.tensor([[0.0, 1], [1, 0]])  # W_{1->1}
    with torch.no_grad():
        model.embedding.weight[:, 0] = torch.cat([e0, e1])
        model.cross_weight[0, 0] = w
    return model


def test_sub_embedding_ia_hand_checked():
    model = _hand_model()
    ia = sub_embedding_information_abundance(model)
    assert ia.shape == (1, 2, 2)
    # [i, j] = IA(E_i W_{i->j}^T). E_0 has singular values sqrt(3), 1; E_0 W_{0->1}^T has rank 1;
    # E_1 W_{1->0}^T = 2 I; E_1 W_{1->1}^T = [[0, 2], [1, 0]] has singular values 2, 1.
    expected = [[1 + 1 / math.sqrt(3), 1.0], [2.0, 1.5]]
    assert torch.allclose(ia[0], torch.tensor(expected, dtype=torch.float64))
    pattern = interaction_pattern(model)
    assert torch.allclose(
        pattern[0],
        torch.tensor([[math.sqrt(2), 1.0], [math.sqrt(5), math.sqrt(2)]], dtype=torch.float64),
    )


def test_sub_embedding_ia_me_shapes_and_routes():
    model = _model(scale=2)  # M = 2, N = 4, K = 10
    per_set = sub_embedding_information_abundance(model)
    assert per_set.shape == (2, 4, 4)
    exact = sub_embedding_information_abundance(model, method="exact")
    gram = sub_embedding_information_abundance(model, method="gram")
    assert torch.allclose(exact, gram, atol=1e-5)
    # per-set entry by hand: E_i^(m) W_{i->j}^(m)T from the first cross layer
    w = model.cross_weights()[0][0, 1]  # set 1
    e3 = model.embedding_tables()[3][1]  # field 3, set 1
    block = w[2 * 10 : 3 * 10, 3 * 10 : 4 * 10]  # W_{3->2}
    assert float(per_set[1, 3, 2]) == pytest.approx(float(information_abundance(e3 @ block.T)))
    concat = sub_embedding_information_abundance(model, combine="concat")
    assert concat.shape == (4, 4)
    w0 = model.cross_weights()[0][0, 0][2 * 10 : 3 * 10, 3 * 10 : 4 * 10]
    manual = torch.cat([model.embedding_tables()[3][0] @ w0.T, e3 @ block.T], 1)
    assert float(concat[3, 2]) == pytest.approx(float(information_abundance(manual)))
    assert interaction_pattern(model, layer=3).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="layer"):
        interaction_pattern(model, layer=4)
    with pytest.raises(TypeError, match="cross network"):
        sub_embedding_information_abundance(_model("dnn"))


def test_sub_embedding_correlation():
    # IA(E_i->j) = a_i + 2 b_j: the target sums follow IA(E_j) = b_j exactly
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.5, 3.0, 1.0])
    mat = a[:, None] + 2 * b[None, :]
    c = sub_embedding_correlation(mat, b)
    assert c["target_pearson"] == pytest.approx(1.0)
    assert c["target_spearman"] == pytest.approx(1.0)
    assert c["target_sum"] == pytest.approx((mat.sum(0)).tolist())
    out = sub_embedding_analysis(_model(scale=2))
    assert len(out["per_set"]) == 2
    assert len(out["overall"]["ia_matrix"]) == 4
    assert -1.0 <= out["mean_target_pearson"] <= 1.0
