"""CTRData (split, subsets, cache round trip) and the built-in synthetic dataset."""

import numpy as np
import pytest
import torch

from fastme.data import CTRData, SyntheticTeacher, load_cache, load_dataset, make_synthetic
from fastme.data.synthetic import default_field_dims
from fastme.train.metrics import roc_auc


def tiny(n=103, dims=(3, 5, 7)):
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, d, n) for d in dims], axis=1).astype(np.int32)
    y = (rng.random(n) < 0.3).astype(np.float32)
    return CTRData(x, y, list(dims), ["a", "b", "c"], name="tiny")


# ---- split --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 103, 1000])
def test_split_sizes_follow_the_reference(n):
    train, valid, test = tiny(n).split()
    assert (len(train), len(valid), len(test)) == (
        int(0.8 * n),
        int(0.1 * n),
        n - int(0.8 * n) - int(0.1 * n),
    )


def test_split_is_a_deterministic_partition():
    data = tiny()
    parts = data.split(seed=0)
    again = data.split(seed=0)
    rows = [p.row_numbers() for p in parts]
    for a, b in zip(parts, again):
        np.testing.assert_array_equal(a.row_numbers(), b.row_numbers())
    # disjoint and covering, in the order of torch.randperm with a seeded generator
    np.testing.assert_array_equal(np.sort(np.concatenate(rows)), np.arange(len(data)))
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(np.concatenate(rows), perm)
    other = data.split(seed=1)[0].row_numbers()
    assert not np.array_equal(other, rows[0])
    # subsets see the right rows
    np.testing.assert_array_equal(parts[1].x, data.x[rows[1]])
    np.testing.assert_array_equal(parts[1].y, data.y[rows[1]])
    assert parts[0].name == "tiny/train" and parts[0].field_dims == data.field_dims


def test_split_of_a_subset_and_bad_fractions():
    data = tiny(200)
    train = data.split()[0]
    a, b = train.split(fractions=(0.5, 0.5))
    assert len(a) + len(b) == len(train)
    assert set(a.row_numbers()) | set(b.row_numbers()) == set(train.row_numbers())
    with pytest.raises(ValueError, match="fractions"):
        data.split(fractions=(0.8, 0.3))
    with pytest.raises(ValueError, match="fractions"):
        data.split(fractions=(1.0,))


def test_ctrdata_validates_its_arrays():
    x = np.zeros((4, 2), np.int32)
    with pytest.raises(TypeError, match="int32"):
        CTRData(x.astype(np.int64), np.zeros(4, np.float32), [1, 1])
    with pytest.raises(ValueError, match="rows"):
        CTRData(x, np.zeros(3, np.float32), [1, 1])
    with pytest.raises(ValueError, match="field_dims"):
        CTRData(x, np.zeros(4, np.float32), [1])
    bad = CTRData(x + 5, np.zeros(4, np.float32), [2, 9])
    with pytest.raises(ValueError, match="outside"):
        bad.check_indices()


def test_cache_round_trip(tmp_path):
    data = tiny()
    data.info["note"] = "kept"
    path = data.save(tmp_path / "cache")
    back = load_cache(path)
    assert isinstance(back.x, np.memmap)
    np.testing.assert_array_equal(back.x, data.x)
    np.testing.assert_array_equal(back.y, data.y)
    assert back.field_dims == data.field_dims and back.field_names == data.field_names
    assert back.info["note"] == "kept"
    # a subset saves its own rows; the split of the reloaded data equals the original's
    sub = data.split()[2]
    np.testing.assert_array_equal(load_cache(sub.save(tmp_path / "sub")).x, sub.x)
    np.testing.assert_array_equal(back.split()[0].x, data.split()[0].x)
    with pytest.raises(FileNotFoundError, match="not a fastme data cache"):
        load_cache(tmp_path / "nothing")


# ---- synthetic ----------------------------------------------------------------------------------


def test_synthetic_shape_is_criteo_like():
    dims = default_field_dims()
    assert len(dims) == 39 and min(dims) <= 5 and max(dims) == 100_000
    data = make_synthetic(20_000, min_count=0, generator="v1")
    assert data.field_dims == dims and data.num_fields == 39
    assert data.field_names[0] == "I1" and data.field_names[-1] == "C26"
    assert data.x.dtype == np.int32 and data.y.dtype == np.float32
    data.check_indices()
    assert 0.2 < data.positive_rate() < 0.3
    # power-law value frequencies: in the largest field the top value is common, most are rare
    big = data.x[:, dims.index(100_000)]
    counts = np.bincount(big, minlength=100_000)
    assert counts[0] > 0.05 * len(big) and (counts > 0).sum() < 0.5 * 100_000


def test_synthetic_is_deterministic_and_thresholded():
    dims = [3, 30, 300, 3000, 30000]
    a = make_synthetic(5_000, seed=3, field_dims=dims)
    b = make_synthetic(5_000, seed=3, field_dims=dims)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.field_dims == b.field_dims
    c = make_synthetic(5_000, seed=4, field_dims=dims)
    assert not np.array_equal(a.y, c.y)
    # raw values: a smaller dataset is a prefix of a larger one
    raw_small = make_synthetic(1_000, seed=3, min_count=0, field_dims=dims)
    raw = make_synthetic(5_000, seed=3, min_count=0, field_dims=dims)
    np.testing.assert_array_equal(raw_small.x, raw.x[:1_000])
    np.testing.assert_array_equal(raw_small.y, raw.y[:1_000])
    # thresholding: every kept value appears >= 10 times, the OOV index (last) collects the rest
    for i, d in enumerate(a.field_dims):
        counts = np.bincount(a.x[:, i], minlength=d)
        assert len(counts) == d and (counts[:-1] >= 10).all()
        assert (np.diff(counts[:-1]) <= 0).all()  # numbered by decreasing count
        raw_counts = np.bincount(raw.x[:, i])
        assert counts[-1] == raw_counts[raw_counts < 10].sum()


def test_synthetic_labels_need_interactions():
    """The pair terms carry signal that no first-order model can see."""
    teacher = SyntheticTeacher(seed=0)
    x = teacher.sample_x(20_000)
    y = teacher.sample_labels(x)
    first, pairs = teacher.logits(x, parts=True)
    full = roc_auc(y, first + pairs)
    assert full > 0.78
    assert full - roc_auc(y, first) > 0.1
    # centred latents: a pair term averages to ~0 within each value of either field
    i, j = teacher.pairs[0]
    term = np.zeros(len(x))
    for (a, b), zl, zr in zip(teacher.pairs, teacher._left, teacher._right):
        if (a, b) == (i, j):
            term = (zl[x[:, a]] * zr[x[:, b]]).sum(1)
    top = x[:, i] == 0
    assert abs(term[top].mean()) < 0.1 * term.std()


def test_synthetic_through_load_dataset_and_errors():
    data = load_dataset("synthetic", num_samples=500, field_dims=[5, 50, 500])
    assert data.num_fields == 3 and data.field_names == ["f0", "f1", "f2"]
    with pytest.raises(ValueError, match="num_samples"):
        make_synthetic(0)
    with pytest.raises(ValueError, match="field_dims"):
        make_synthetic(10, field_dims=[5])
    with pytest.raises(TypeError):
        make_synthetic(10, no_such_option=1)
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("synthetic:foo")
