"""The built-in synthetic CTR dataset: Criteo-like fields, labels from a planted teacher.

Raw values: 13 integer-like fields with 8 to 120 values and 26 categorical fields with 3 to
100,000 values, every field's values drawn with power-law (Zipf) frequencies. Labels come from a
teacher

    logit = b + s1 * sum_i a_i[x_i] + s2 * sum_{(i,j) in P} z_i[x_i]^T A_ij z_j[x_j],
    y ~ Bernoulli(sigmoid(logit)),

with a scalar weight a_i[v] and an r-dimensional latent z_i[v] per value (N(0, 1), the latents
centred under the value frequencies), a random set P of field pairs (favouring fields with fewer
values, whose values are seen often enough to be learned) and random orthogonal, full-rank r x r
matrices A_ij. The pair terms have zero mean given any single field, so a model without feature
interactions cannot use them at all, and a field that interacts with several others needs up to r
independent directions in its embedding: the interactions are of high rank. b sets the click rate
to about ``positive_rate``.

Then, as Criteo's preprocessing does, values seen fewer than ``min_count`` (10) times become one
OOV index per field, so the dataset's cardinalities grow with its size, as a real log's do.

Every random stream is derived from ``seed`` alone (field by field), so the data is deterministic,
and the raw values of a smaller dataset are a prefix of a larger one's with the same seed.
docs/data.md gives the numbers (Bayes AUC, what a first-order model reaches).
"""

from __future__ import annotations

import numpy as np

from fastme.data.dataset import CTRData
from fastme.data.raw import CRITEO_FIELD_NAMES

#: Rows of the default dataset: enough that DCNv2 clearly learns the interactions (test AUC ~0.75
#: against ~0.64 for a first-order model), few enough that ``fastme train`` finishes in a few
#: minutes on a 2-core CPU. Use more (--synthetic-samples) on a GPU.
DEFAULT_NUM_SAMPLES = 60_000



def default_field_dims() -> list[int]:
    """Criteo-like cardinalities: I1..I13 from 8 to 120 values, C1..C26 from 3 to 100,000 in a
    fixed shuffled order (as in Criteo, cardinality is not sorted by column)."""
    ints = np.rint(np.geomspace(8, 120, 13)).astype(int)
    cats = np.rint(np.geomspace(3, 100_000, 26)).astype(int)
    cats = cats[np.random.default_rng(20140101).permutation(26)]
    return [int(d) for d in np.concatenate([ints, cats])]


class _Zipf:
    """Value v of a field with ``dim`` values has probability proportional to (v + 1)^-exponent."""

    def __init__(self, dim: int, exponent: float):
        self.pmf = 1.0 / np.arange(1, dim + 1) ** exponent
        self.pmf /= self.pmf.sum()
        self.cdf = np.cumsum(self.pmf)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        # min() guards the last bin against cdf[-1] rounding below a uniform draw
        return np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"),
                          len(self.cdf) - 1)


class SyntheticTeacher:
    """The planted model behind :func:`make_synthetic` (see the module docstring).

    ``logits(x)`` gives the true logit of rows ``x`` (int [n, N]); ``logits(x, parts=True)`` the
    first-order and pair-interaction parts separately (without the bias), e.g. to measure what a
    model without interactions could reach at best.
    """

    def __init__(self, seed: int = 0, field_dims=None, rank: int = 8, num_pairs: int | None = None,
                 first_order_scale: float = 1.0, interaction_scale: float = 3.0,
                 zipf_exponents: tuple[float, float] = (1.2, 1.6), positive_rate: float = 0.25,
                 pair_weighting: float = 3.0):
        dims = default_field_dims() if field_dims is None else [int(d) for d in field_dims]
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"field_dims must hold >= 2 positive cardinalities, got {dims}")
        n_fields = len(dims)
        if int(rank) != rank or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        all_pairs = n_fields * (n_fields - 1) // 2
        num_pairs = min(30, all_pairs) if num_pairs is None else int(num_pairs)
        if not 0 <= num_pairs <= all_pairs:
            raise ValueError(f"num_pairs must be in [0, {all_pairs}], got {num_pairs}")
        if not 0.0 < positive_rate < 1.0:
            raise ValueError(f"positive_rate must be in (0, 1), got {positive_rate}")
        lo, hi = zipf_exponents
        if not 0.0 <= lo <= hi:
            raise ValueError(f"zipf_exponents must be a range (lo, hi) with 0 <= lo <= hi, "
                             f"got {zipf_exponents}")
        self.field_dims, self.rank, self.num_pairs = dims, int(rank), num_pairs

        teacher_ss, bias_ss, self._label_ss, *self._field_ss = (
            np.random.SeedSequence(seed).spawn(3 + n_fields))
        rng = np.random.default_rng(teacher_ss)
        self.values = [_Zipf(d, e) for d, e in zip(dims, rng.uniform(lo, hi, size=n_fields))]
        self._first = [rng.standard_normal(d) for d in dims]
        # Latents centred under the value frequencies: E[z_j[x_j]] = 0, so a pair term averages
        # to zero given either of its fields alone and carries no first-order signal.
        latent = [z - v.pmf @ z for z, v in
                  ((rng.standard_normal((d, rank)), v) for d, v in zip(dims, self.values))]
        iu, ju = np.triu_indices(n_fields, k=1)
        # Pairs of low-cardinality fields (whose values are seen often) are favoured with
        # probability ~ (ln(1 + D_i) ln(1 + D_j))^-pair_weighting.
        logd = np.log1p(np.asarray(dims, dtype=np.float64))
        p = (logd[iu] * logd[ju]) ** -float(pair_weighting)
        chosen = np.sort(rng.choice(all_pairs, size=num_pairs, replace=False, p=p / p.sum()))
        self.pairs = [(int(iu[p]), int(ju[p])) for p in chosen]
        mixers = [np.linalg.qr(rng.standard_normal((rank, rank)))[0] for _ in self.pairs]
        # z_i^T A z_j = <z_i, (z A^T)_j>: transform field j's table once per pair, so a row's pair
        # term is two gathers and a dot product (float32 tables halve the gather traffic).
        latent = [z.astype(np.float32) for z in latent]
        self._left = [latent[i] for i, _ in self.pairs]
        self._right = [np.einsum("dr,sr->ds", latent[j], a.astype(np.float32))
                       for (_, j), a in zip(self.pairs, mixers)]
        # Unit-variance parts: each a_i[x_i] has variance ~1, each z^T A z' (A orthogonal) ~r.
        self._s1 = first_order_scale / np.sqrt(n_fields)
        self._s2 = interaction_scale / np.sqrt(max(num_pairs, 1) * rank)
        # The bias comes from a fixed pilot sample, so it does not depend on the dataset size.
        pilot = self.sample_x(20_000, streams=[bias_ss] * n_fields)
        self.bias = _bias_for_rate(self.logits(pilot, with_bias=False), positive_rate)

    def sample_x(self, n: int, streams=None) -> np.ndarray:
        """n rows of feature values, int32 [n, N]; field i from its own random stream."""
        x = np.empty((n, len(self.field_dims)), dtype=np.int32)
        rngs = {}
        for i, (v, ss) in enumerate(zip(self.values, streams or self._field_ss)):
            rng = rngs.setdefault(id(ss), np.random.default_rng(ss))  # shared stream: continue it
            x[:, i] = v.sample(rng, n)
        return x

    def logits(self, x: np.ndarray, parts: bool = False, with_bias: bool = True):
        cols = np.ascontiguousarray(np.asarray(x).T)
        one = self._s1 * sum(f[c] for f, c in zip(self._first, cols))
        two = np.zeros(cols.shape[1])
        for (i, j), zl, zr in zip(self.pairs, self._left, self._right):
            two += self._s2 * np.einsum("br,br->b", zl[cols[i]], zr[cols[j]], dtype=np.float64)
        if parts:
            return one, two
        return one + two + (self.bias if with_bias else 0.0)

    def sample_labels(self, x: np.ndarray) -> np.ndarray:
        logits = np.empty(len(x))
        for s in range(0, len(x), 1 << 18):  # bounded temporaries
            logits[s:s + (1 << 18)] = self.logits(x[s:s + (1 << 18)])
        prob = 1.0 / (1.0 + np.exp(-logits))
        return (np.random.default_rng(self._label_ss).random(len(x)) < prob).astype(np.float32)


def make_synthetic(num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0, *, field_dims=None,
                   field_names=None, min_count: int = 10, **teacher_options) -> CTRData:
    """Generate the synthetic dataset (see the module docstring).

    Args:
        num_samples: number of rows.
        seed: seeds everything; same seed and size -> same teacher and rows.
        field_dims: the raw value space of every field (default: :func:`default_field_dims`, 39
            Criteo-like fields of 3 to 100,000 values).
        field_names: names (default I1..I13, C1..C26 for 39 fields, else f0, f1, ...).
        min_count: as in the Criteo preprocessing, values seen fewer times in the sample share
            one OOV index per field, and kept values are numbered by decreasing count; the
            dataset's ``field_dims`` are then (kept + 1). 0 keeps the raw values as indices
            (``field_dims`` = the raw value spaces; what :class:`SyntheticTeacher` takes).
        teacher_options: :class:`SyntheticTeacher` knobs: ``rank`` (r, default 8), ``num_pairs``
            (|P|, default 2 per field), ``first_order_scale`` / ``interaction_scale`` (standard
            deviations of the two logit parts), ``zipf_exponents`` (each field's Zipf exponent is
            uniform in this range), ``pair_weighting``, ``positive_rate`` (0.25).
    """
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 0:
        raise ValueError(f"min_count must be a non-negative integer, got {min_count!r}")
    teacher = SyntheticTeacher(seed, field_dims, **teacher_options)
    dims = teacher.field_dims
    if field_names is None:
        field_names = CRITEO_FIELD_NAMES if len(dims) == 39 else [f"f{i}" for i in range(len(dims))]
    names = list(field_names)
    if len(names) != len(dims):
        raise ValueError(f"field_names has {len(names)} names for {len(dims)} fields")
    x = teacher.sample_x(int(num_samples))
    y = teacher.sample_labels(x)  # from the raw values: the OOV bucket mixes distinct truths
    if min_count > 0:
        dims = [_threshold_column(x[:, i], d, int(min_count)) for i, d in enumerate(dims)]
    info = {"dataset": "synthetic", "num_samples": int(num_samples), "seed": int(seed),
            "min_count": int(min_count), "raw_field_dims": teacher.field_dims,
            "teacher_options": teacher_options,
            "interacting_pairs": [[names[i], names[j]] for i, j in teacher.pairs]}
    return CTRData(x, y, dims, names, name="synthetic", info=info)


def _threshold_column(col: np.ndarray, dim: int, min_count: int) -> int:
    """Renumber one field in place: kept values 0..k-1 by decreasing count (ties by raw value),
    rarer ones k. Returns the new cardinality k + 1."""
    counts = np.bincount(col, minlength=dim)
    kept = np.flatnonzero(counts >= min_count)
    kept = kept[np.lexsort((kept, -counts[kept]))]
    remap = np.full(dim, len(kept), dtype=np.int32)
    remap[kept] = np.arange(len(kept), dtype=np.int32)
    col[:] = remap[col]
    return len(kept) + 1


def _bias_for_rate(logits: np.ndarray, rate: float) -> float:
    """b with mean(sigmoid(logits + b)) == rate (bisection; the mean is monotone in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
