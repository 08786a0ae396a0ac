"""The built-in synthetic CTR dataset: fields with power-law value frequencies, labels from a
planted teacher

    logit = b + s1 * sum_i a_i[x_i] + s2 * sum_{(i,j) in P} z_i[x_i]^T A_ij z_j[x_j],
    y ~ Bernoulli(sigmoid(logit)),

with a scalar weight a_i[v] and an r-dimensional latent z_i[v] per value (N(0, 1), the latents
centred under the value frequencies) and a mixer A_ij per interacting pair. The pair terms have
zero mean given any single field, so a model without feature interactions cannot use them at all.
b sets the click rate to about ``positive_rate``. Two generators choose the fields and P:

- ``"v2"`` (default): a small instance of the paper's collapse mechanism (§4, Appendix G). Four
  low-cardinality fields L1..L4 (2 to 5 values, fewer than the base embedding size 10) and twelve
  rich fields R1..R12 (20 to 2,000 values). Every rich field interacts with every low field, with
  rank D_low - 1 (all a centred latent of D_low values can hold): the interactions through which,
  by the interaction-collapse theory, the low-information fields restrict the rich fields'
  embeddings. Each rich field also interacts with four other rich fields (its neighbours at
  distance 1 and 2 on a ring) at rank 16 (> 10): the information a larger embedding could hold.
  A_ij has rank_ij unit singular values and every pair term the same standard deviation. Why
  these choices, and what each knob does to SE and ME models: docs/analysis.md.
- ``"v1"``: 39 Criteo-like fields (13 with 8 to 120 values, 26 with 3 to 100,000) and 30 random
  pairs, favouring fields with fewer values, with random orthogonal (full-rank) r x r mixers
  (docs/data.md).

Then, as Criteo's preprocessing does, values seen fewer than ``min_count`` (10) times become one
OOV index per field, so the dataset's cardinalities grow with its size, as a real log's do.

Every random stream is derived from ``seed`` alone (field by field), so the data is deterministic,
and the raw values of a smaller dataset are a prefix of a larger one's with the same seed.
"""

from __future__ import annotations

import numpy as np

from fastme.data.dataset import CTRData
from fastme.data.formats.criteo import CRITEO_FIELD_NAMES
from fastme.data.sources import check_count

#: Rows of the default dataset: enough that DCNv2 learns the interactions well past what a
#: first-order model reaches, few enough that the scaling sweep fits in minutes on a 2-core CPU.
#: Use more (--synthetic-samples) on a GPU.
DEFAULT_NUM_SAMPLES = 60_000


#: "v2" (default): few fields, the paper's collapse mechanism planted (see the module docstring);
#: "v1": 39 Criteo-like fields with random high-rank pairs.
GENERATORS = ("v2", "v1")
#: v2: a field with fewer values than this (the paper's base embedding size K = 10) is
#: low-cardinality.
LOW_CARDINALITY = 10
LOW_FIELD_DIMS = (2, 3, 4, 5)
V2_ZIPF_EXPONENTS = (1.05, 1.3)
_DESIGN_OPTIONS = ("rich_rank", "rich_offsets", "low_weight", "rich_weight", "low_threshold")


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
        return np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), len(self.cdf) - 1)


class SyntheticTeacher:
    """The planted model behind :func:`make_synthetic` (see the module docstring).

    ``logits(x)`` gives the true logit of rows ``x`` (int [n, N]); ``logits(x, parts=True)`` the
    first-order and pair-interaction parts separately (without the bias), e.g. to measure what a
    model without interactions could reach at best.
    """

    def __init__(
        self,
        seed: int = 0,
        field_dims=None,
        rank: int = 8,
        num_pairs: int | None = None,
        first_order_scale: float = 1.0,
        interaction_scale: float = 3.0,
        zipf_exponents: tuple[float, float] = (1.2, 1.6),
        positive_rate: float = 0.25,
        pair_weighting: float = 3.0,
        pairs=None,
    ):
        dims = default_field_dims() if field_dims is None else [int(d) for d in field_dims]
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"field_dims must hold >= 2 positive cardinalities, got {dims}")
        n_fields = len(dims)
        if int(rank) != rank or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        all_pairs = n_fields * (n_fields - 1) // 2
        if pairs is not None:
            pairs = _check_pairs(pairs, n_fields, int(rank))
            if num_pairs is not None and int(num_pairs) != len(pairs):
                raise ValueError(
                    f"num_pairs ({num_pairs}) contradicts the {len(pairs)} pairs given"
                )
            num_pairs = len(pairs)
        num_pairs = min(30, all_pairs) if num_pairs is None else int(num_pairs)
        if not 0 <= num_pairs <= all_pairs:
            raise ValueError(f"num_pairs must be in [0, {all_pairs}], got {num_pairs}")
        if not 0.0 < positive_rate < 1.0:
            raise ValueError(f"positive_rate must be in (0, 1), got {positive_rate}")
        lo, hi = zipf_exponents
        if not 0.0 <= lo <= hi:
            raise ValueError(
                f"zipf_exponents must be a range (lo, hi) with 0 <= lo <= hi, got {zipf_exponents}"
            )
        self.field_dims, self.rank, self.num_pairs = dims, int(rank), num_pairs

        teacher_ss, bias_ss, self._label_ss, *self._field_ss = np.random.SeedSequence(seed).spawn(
            3 + n_fields
        )
        rng = np.random.default_rng(teacher_ss)
        self.values = [_Zipf(d, e) for d, e in zip(dims, rng.uniform(lo, hi, size=n_fields))]
        self._first = [rng.standard_normal(d) for d in dims]
        # Latents centred under the value frequencies: E[z_j[x_j]] = 0, so a pair term averages
        # to zero given either of its fields alone and carries no first-order signal.
        latent = [
            z - v.pmf @ z
            for z, v in ((rng.standard_normal((d, rank)), v) for d, v in zip(dims, self.values))
        ]
        if pairs is None:
            iu, ju = np.triu_indices(n_fields, k=1)
            # Pairs of low-cardinality fields (whose values are seen often) are favoured with
            # probability ~ (ln(1 + D_i) ln(1 + D_j))^-pair_weighting.
            logd = np.log1p(np.asarray(dims, dtype=np.float64))
            p = (logd[iu] * logd[ju]) ** -float(pair_weighting)
            chosen = np.sort(rng.choice(all_pairs, size=num_pairs, replace=False, p=p / p.sum()))
            self.pairs = [(int(iu[p]), int(ju[p])) for p in chosen]
            self.pair_ranks = [rank] * num_pairs
            weights = np.ones(num_pairs)
            mixers = [np.linalg.qr(rng.standard_normal((rank, rank)))[0] for _ in self.pairs]
        else:
            self.pairs = [(i, j) for i, j, _, _ in pairs]
            self.pair_ranks = [r for _, _, r, _ in pairs]
            weights = np.array([w for _, _, _, w in pairs], dtype=np.float64)
            # A_ij = Q Q'^T with Q, Q' r x rank_ij with orthonormal columns: a rank-limited mixer
            # whose term z_i^T A z_j has variance ~rank; 1/sqrt(rank) brings it to ~1 before the
            # weight.
            mixers = []
            for r_ij, w in zip(self.pair_ranks, weights):
                left = np.linalg.qr(rng.standard_normal((rank, r_ij)))[0]
                right = np.linalg.qr(rng.standard_normal((rank, r_ij)))[0]
                mixers.append(w / np.sqrt(r_ij) * left @ right.T)
        # z_i^T A z_j = <z_i, (z A^T)_j>: transform field j's table once per pair, so a row's pair
        # term is two gathers and a dot product (float32 tables halve the gather traffic).
        latent = [z.astype(np.float32) for z in latent]
        self._left = [latent[i] for i, _ in self.pairs]
        self._right = [
            np.einsum("dr,sr->ds", latent[j], a.astype(np.float32))
            for (_, j), a in zip(self.pairs, mixers)
        ]
        # Unit-variance parts: each a_i[x_i] has variance ~1, each z^T A z' (A orthogonal) ~r.
        self._s1 = first_order_scale / np.sqrt(n_fields)
        if pairs is None:
            self._s2 = interaction_scale / np.sqrt(max(num_pairs, 1) * rank)
        else:  # every pair term already has standard deviation ~ its weight
            self._s2 = interaction_scale / np.sqrt(max(float(weights @ weights), 1e-12))
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
            logits[s : s + (1 << 18)] = self.logits(x[s : s + (1 << 18)])
        prob = 1.0 / (1.0 + np.exp(-logits))
        return (np.random.default_rng(self._label_ss).random(len(x)) < prob).astype(np.float32)


def collapse_field_dims() -> list[int]:
    """v2's fields: 4 low-cardinality ones (2 to 5 values, all below the base embedding size 10)
    and 12 rich ones (20 to 2,000 values, geometric)."""
    return list(LOW_FIELD_DIMS) + [int(d) for d in np.rint(np.geomspace(20, 2_000, 12))]


def collapse_pairs(
    field_dims,
    rich_rank: int = 16,
    rich_offsets=(1, 2),
    low_weight: float = 1.0,
    rich_weight: float = 1.0,
    low_threshold: int = LOW_CARDINALITY,
):
    """v2's planted interactions on ``field_dims``: a field is low-cardinality when it has fewer
    than ``low_threshold`` values (D < K, the paper's low-information case), rich otherwise.

    - every rich field interacts with every low field, with rank D_low - 1 (all a centred latent
      of D_low values can hold) and weight ``low_weight``: the interactions that restrict the
      rich fields' embeddings;
    - rich field number a interacts with rich fields a + o (o in ``rich_offsets``, cyclically),
      with rank ``rich_rank`` and weight ``rich_weight``: the high-rank information that larger
      embeddings can hold.

    A weight of 0 leaves that kind of pair out (for ablations).

    Returns (pairs as (i, j, rank, weight), latent rank r).
    """
    low = [i for i, d in enumerate(field_dims) if d < low_threshold]
    rich = [i for i, d in enumerate(field_dims) if d >= low_threshold]
    pairs, seen = [], set()
    for r in rich:
        for lo in low:
            if field_dims[lo] >= 2 and low_weight > 0:  # a one-valued field carries nothing
                pairs.append((lo, r, field_dims[lo] - 1, low_weight))
    if len(rich) > 1 and rich_weight > 0:
        for a in range(len(rich)):
            for o in rich_offsets:
                i, j = sorted((rich[a], rich[(a + int(o)) % len(rich)]))
                if i != j and (i, j) not in seen:
                    seen.add((i, j))
                    pairs.append((i, j, int(rich_rank), rich_weight))
    rank = max([int(rich_rank)] + [field_dims[lo] - 1 for lo in low])
    return pairs, rank


def synthetic_teacher(
    seed: int = 0, generator: str = "v2", field_dims=None, **options
) -> SyntheticTeacher:
    """The planted teacher of :func:`make_synthetic` with the same arguments."""
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")
    if generator == "v1":
        return SyntheticTeacher(seed, field_dims, **options)
    options = dict(options)
    design = {k: options.pop(k) for k in _DESIGN_OPTIONS if k in options}
    for k in ("pairs", "num_pairs", "pair_weighting", "rank"):
        if k in options:
            raise ValueError(
                f"generator v2 plants its own pairs; {k!r} is a v1 option (use "
                f"generator='v1', or v2's {', '.join(_DESIGN_OPTIONS)})"
            )
    field_dims = collapse_field_dims() if field_dims is None else [int(d) for d in field_dims]
    pairs, rank = collapse_pairs(field_dims, **design)
    options = {"zipf_exponents": V2_ZIPF_EXPONENTS, **options}
    return SyntheticTeacher(seed, field_dims, rank=rank, pairs=pairs, **options)


def make_synthetic(
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    *,
    generator: str = "v2",
    field_dims=None,
    field_names=None,
    min_count: int = 10,
    **options,
) -> CTRData:
    """Generate the synthetic dataset (see the module docstring).

    Args:
        num_samples: number of rows.
        seed: seeds everything; same seed and size -> same teacher and rows.
        generator: "v2" (default) or "v1", see the module docstring.
        field_dims: the raw value space of every field (default: :func:`collapse_field_dims` for
            v2, 4 low-cardinality and 12 rich fields; :func:`default_field_dims` for v1, 39
            Criteo-like fields of 3 to 100,000 values). With v2, fields with fewer than 10 values
            are the low-cardinality ones.
        field_names: names (default fields: L1.. for v2's low-cardinality fields, R1.. for its
            rich ones; I1..I13, C1..C26 for v1's 39 fields; given ``field_dims``: f0, f1, ...).
        min_count: as in the Criteo preprocessing, values seen fewer times in the sample share
            one OOV index per field, and kept values are numbered by decreasing count; the
            dataset's ``field_dims`` are then (kept + 1). 0 keeps the raw values as indices
            (``field_dims`` = the raw value spaces; what :class:`SyntheticTeacher` takes).
        options: :class:`SyntheticTeacher` knobs: ``first_order_scale`` / ``interaction_scale``
            (standard deviations of the two logit parts, 1 and 3), ``zipf_exponents`` (each
            field's Zipf exponent is uniform in this range; v2 (1.05, 1.3), v1 (1.2, 1.6)),
            ``positive_rate`` (0.25); v1 only: ``rank`` (r, default 8), ``num_pairs`` (|P|,
            default 30), ``pair_weighting``; v2 only: the :func:`collapse_pairs` knobs
            ``rich_rank``, ``rich_offsets``, ``low_weight``, ``rich_weight``, ``low_threshold``.
    """
    num_samples = check_count("num_samples", num_samples)
    min_count = check_count("min_count", min_count, 0)
    teacher = synthetic_teacher(seed, generator, field_dims, **options)
    dims = teacher.field_dims
    if field_names is None:
        if generator == "v2" and field_dims is None:  # L1..: low-cardinality fields, R1..: rich
            low = options.get("low_threshold", LOW_CARDINALITY)
            counts = {"L": 0, "R": 0}
            field_names = []
            for d in dims:
                kind = "L" if d < low else "R"
                counts[kind] += 1
                field_names.append(f"{kind}{counts[kind]}")
        elif generator == "v1" and len(dims) == 39:
            field_names = CRITEO_FIELD_NAMES
        else:
            field_names = [f"f{i}" for i in range(len(dims))]
    names = list(field_names)
    if len(names) != len(dims):
        raise ValueError(f"field_names has {len(names)} names for {len(dims)} fields")
    x = teacher.sample_x(num_samples)
    y = teacher.sample_labels(x)  # from the raw values: the OOV bucket mixes distinct truths
    if min_count > 0:
        dims = [_threshold_column(x[:, i], d, min_count) for i, d in enumerate(dims)]
    info = {
        "dataset": "synthetic",
        "generator": generator,
        "num_samples": num_samples,
        "seed": int(seed),
        "min_count": min_count,
        "raw_field_dims": teacher.field_dims,
        "options": options,
        "pair_ranks": teacher.pair_ranks,
        "interacting_pairs": [[names[i], names[j]] for i, j in teacher.pairs],
    }
    return CTRData(x, y, dims, names, name="synthetic", info=info)


def _check_pairs(pairs, n_fields: int, rank: int) -> list[tuple[int, int, int, float]]:
    """Explicit teacher pairs as (i, j, rank_ij, weight), checked."""
    checked, seen = [], set()
    for pair in pairs:
        i, j, r_ij, w = (tuple(pair) + (1.0,))[:4] if len(pair) == 3 else tuple(pair)
        if not (0 <= int(i) < n_fields and 0 <= int(j) < n_fields and i != j):
            raise ValueError(
                f"pairs: ({i}, {j}) is not a pair of two distinct fields in 0..{n_fields - 1}"
            )
        if frozenset((i, j)) in seen:
            raise ValueError(f"pairs: ({i}, {j}) is given twice")
        if not 1 <= int(r_ij) <= rank:
            raise ValueError(f"pairs: the rank of ({i}, {j}) must be in 1..rank={rank}, got {r_ij}")
        if not float(w) > 0:
            raise ValueError(f"pairs: the weight of ({i}, {j}) must be > 0, got {w}")
        seen.add(frozenset((i, j)))
        checked.append((int(i), int(j), int(r_ij), float(w)))
    return checked


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
