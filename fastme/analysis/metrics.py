"""Matrix-level collapse metrics: information abundance (IA), singular-value spectra and the
principal-angle diversity of two embedding sets.

Every function takes a torch tensor or a numpy array and works in float64: collapse shows up in
the small singular values, which float32 would blur. Tall matrices (many rows, few columns: the
usual embedding table) go through the K x K Gram matrix E^T E, accumulated over row chunks so a
float32 table is never copied whole to float64.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch

#: Rows per chunk when accumulating a Gram matrix (bounds the float64 copy to ~chunk x K values).
GRAM_CHUNK_ROWS = 1 << 16

#: ``method="auto"`` uses the Gram matrix when D >= GRAM_MIN_ASPECT * K and D * K is at least
#: GRAM_MIN_SIZE; the exact SVD is cheap below that.
GRAM_MIN_ASPECT = 4
GRAM_MIN_SIZE = 1 << 16

METHODS = ("auto", "exact", "gram")


@contextlib.contextmanager
def single_thread():
    """Run torch on one CPU thread inside the block. Used around many small (K x K-sized)
    decompositions: extra threads only add synchronisation there, and on a busy machine the
    spinning threads slow such work down by an order of magnitude. Large passes over a table
    (Gram matrices, chunked QR) stay outside and use every thread."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _threads_for(shape):
    """One thread for (stacks of) small matrices, all threads for large ones."""
    small = shape[-2] * shape[-1] <= GRAM_MIN_SIZE
    return single_thread() if small else contextlib.nullcontext()


def as_matrix(E, name: str = "E", min_dim: int = 2) -> torch.Tensor:
    """``E`` (tensor or array-like) as a detached tensor, checked to be a real matrix (stack)."""
    if isinstance(E, np.ndarray) or not isinstance(E, torch.Tensor):
        try:
            E = torch.as_tensor(np.asarray(E))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a tensor or array of numbers, got {type(E).__name__}"
            ) from exc
    E = E.detach()
    if E.is_complex() or not (
        E.is_floating_point()
        or E.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)
    ):
        raise TypeError(f"{name} must hold real numbers, got dtype {E.dtype}")
    if E.dim() < min_dim:
        raise ValueError(
            f"{name} must be a matrix [D, K] or a stack [..., D, K], got shape {tuple(E.shape)}"
        )
    if E.shape[-1] == 0 or E.shape[-2] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got {tuple(E.shape)}")
    return E


def gram(E, F=None, chunk_rows: int = GRAM_CHUNK_ROWS) -> torch.Tensor:
    """E^T F (E^T E when F is None) in float64, over the last two dims, accumulated in row chunks.

    E [..., D, K], F [..., D, K'] -> [..., K, K'].
    """
    E = as_matrix(E)
    F = E if F is None else as_matrix(F, "F")
    if F.shape[-2] != E.shape[-2]:
        raise ValueError(
            f"E and F must have the same number of rows, got {E.shape[-2]} and {F.shape[-2]}"
        )
    out = None
    for start in range(0, E.shape[-2], chunk_rows):
        a = E[..., start : start + chunk_rows, :].to(torch.float64)
        b = a if F is E else F[..., start : start + chunk_rows, :].to(torch.float64)
        part = a.transpose(-1, -2) @ b
        out = part if out is None else out + part
    return out


def _use_gram(shape, method: str) -> bool:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method == "gram"
    d, k = shape[-2], shape[-1]
    return d >= GRAM_MIN_ASPECT * k and d * k >= GRAM_MIN_SIZE


def compact_factor(E, method: str = "auto", chunk_rows: int = GRAM_CHUNK_ROWS) -> torch.Tensor:
    """A small stand-in R [..., r, K] (r = min(D, K), float64) for a tall E [..., D, K].

    R = Q^T E for an orthonormal Q [D, r] whose span contains E's column space, so R keeps
    everything the analysis looks at: E's singular values (and R^T R = E^T E), the singular values
    of any product E W^T, and the principal angles between the column spaces of two column blocks
    of E. One pass over E; all later work is on r x K matrices.

    ``"exact"``: the R of a QR decomposition, computed over row chunks (the R's of the chunks are
    stacked and decomposed again), backward stable like an SVD. ``"gram"``: R = diag(sqrt(eig))
    V^T from the eigendecomposition of E^T E (Q = the left singular vectors), about twice as fast;
    see :func:`singular_values` for its accuracy. ``"auto"``: the Gram route for tall matrices.
    A matrix with D <= K is returned as it is (Q = I).
    """
    E = as_matrix(E)
    d, k = E.shape[-2], E.shape[-1]
    if d <= k:
        return E.to(torch.float64)
    if _use_gram(E.shape, method):
        g = gram(E, chunk_rows=chunk_rows)
        with single_thread():
            lam, v = torch.linalg.eigh(g)
        lam, v = lam.flip(-1), v.flip(-1)  # descending
        return lam.clamp_min(0).sqrt().unsqueeze(-1) * v.transpose(-1, -2)
    r = None
    for start in range(0, d, chunk_rows):
        block = E[..., start : start + chunk_rows, :].to(torch.float64)
        if r is not None:
            block = torch.cat([r, block], dim=-2)
        with _threads_for(block.shape):
            r = torch.linalg.qr(block, mode="r").R
    return r


def singular_values(E, method: str = "auto") -> torch.Tensor:
    """Singular values of E [..., D, K] in descending order, float64, shape [..., min(D, K)].

    ``"exact"``: LAPACK SVD in float64 (through a chunked QR for tall matrices). ``"gram"``:
    square roots of the eigenvalues of E^T E (float64). The Gram route squares the condition
    number: a singular value is recovered to an absolute error of about sqrt(K * eps64) *
    sigma_max ~ 1e-7 * sigma_max, so IA (a sum of K values divided by sigma_max) is accurate to
    about K * 1e-7 absolute, far below anything the analysis distinguishes. Both routes make one
    pass over E in row chunks with O(K^2) extra memory; a 1e6 x 100 float32 table takes about a
    second (Gram) or two (exact) on two CPU cores. ``"auto"`` picks the Gram route for tall
    matrices (D >= 4K and D*K >= 65536), the exact SVD otherwise.
    """
    E = as_matrix(E)
    if _use_gram(E.shape, method):
        g = gram(E)
        with single_thread():
            eig = torch.linalg.eigvalsh(g)  # ascending
        sv = eig.clamp_min(0).sqrt().flip(-1)
        return sv[..., : min(E.shape[-2], E.shape[-1])]
    if E.shape[-2] > GRAM_CHUNK_ROWS:
        E = compact_factor(E, "exact")  # stream the rows; R has E's singular values
    with _threads_for(E.shape):
        return torch.linalg.svdvals(E.to(torch.float64))


def _ia_from_sv(sv: torch.Tensor) -> torch.Tensor:
    top = sv[..., 0]
    # IA of an all-zero matrix: no direction carries information, so 0 (like its rank).
    return torch.where(
        top > 0, sv.sum(-1) / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(top)
    )


def information_abundance(E, method: str = "auto") -> torch.Tensor:
    """IA(E) = ||sigma||_1 / ||sigma||_inf (the paper's Definition 3.1).

    E: a matrix [D, K] or a stack [..., D, K] (tensor or array). Returns a float64 tensor of shape
    ``E.shape[:-2]`` (0-dim for one matrix; ``float(...)`` gives the number). IA lies in
    [1, min(D, K)]: K for a matrix with K equal singular values, 1 for rank one; an all-zero
    matrix gives 0. ``method`` is as in :func:`singular_values`.
    """
    return _ia_from_sv(singular_values(E, method))


def random_factor(num_rows: int, num_cols: int, rng: np.random.Generator) -> torch.Tensor:
    """A draw of :func:`compact_factor` of a D x W standard-normal matrix, without the matrix.

    For D > W the R factor of a Gaussian matrix's QR decomposition is upper triangular with
    R_ii ~ chi(D - i) and independent N(0, 1) entries above the diagonal (Bartlett's
    decomposition), so it is sampled in O(W^2) instead of O(D W). Smaller shapes are sampled
    directly.
    """
    d, w = int(num_rows), int(num_cols)
    if d <= w:
        return torch.from_numpy(rng.standard_normal((d, w)))
    r = np.triu(rng.standard_normal((w, w)), 1)
    r[np.diag_indices(w)] = np.sqrt(rng.chisquare(d - np.arange(w)))
    return torch.from_numpy(r)


@functools.lru_cache(maxsize=1024)
def _random_ia_stats(shape: tuple, samples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    draws = torch.stack([random_factor(*shape, rng) for _ in range(samples)])
    with single_thread():
        ia = _ia_from_sv(torch.linalg.svdvals(draws))
    return float(ia.mean()), float(ia.std()) if samples > 1 else 0.0


def random_ia_stats(
    num_rows: int, num_cols: int, samples: int = 16, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of IA(randn(D, K)) over ``samples`` draws (cached per shape;
    cheap for any D, see :func:`random_factor`). For D >> K the spread is tiny, since the singular
    values concentrate near sqrt(D) +- sqrt(K); for a few rows it is several percent."""
    for name, v in (("num_rows", num_rows), ("num_cols", num_cols), ("samples", samples)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return _random_ia_stats((int(num_rows), int(num_cols)), int(samples), int(seed))


def expected_random_ia(num_rows: int, num_cols: int, samples: int = 16, seed: int = 0) -> float:
    """Monte-Carlo estimate of E[IA(randn(D, K))] (the mean of :func:`random_ia_stats`)."""
    return random_ia_stats(num_rows, num_cols, samples, seed)[0]


def normalized_information_abundance(
    E, baseline: str = "size", method: str = "auto", samples: int = 16, seed: int = 0
) -> torch.Tensor:
    """The size-independent IA variants of Appendix I.

    ``baseline="size"``: IA(E) / K. ``baseline="random"``: IA(E) / E[IA(randn_like(E))], i.e.
    relative to an uncollapsed Gaussian matrix of the same shape (1 = as abundant as random).
    """
    E = as_matrix(E)
    ia = information_abundance(E, method)
    if baseline == "size":
        return ia / E.shape[-1]
    if baseline == "random":
        return ia / expected_random_ia(E.shape[-2], E.shape[-1], samples, seed)
    raise ValueError(f"baseline must be 'size' or 'random', got {baseline!r}")


def spectrum(E, method: str = "auto") -> torch.Tensor:
    """Singular values divided by the largest one (Figure 1b's normalised spectrum), descending."""
    sv = singular_values(E, method)
    top = sv[..., :1]
    return sv / torch.where(top > 0, top, torch.ones_like(top))


#: Directions of an embedding set weaker than this fraction of its strongest one count as absent
#: in the diversity (their singular vectors are numerically arbitrary; above the Gram route's
#: noise floor of ~1e-7).
DIVERSITY_RTOL = 1e-6


def column_basis(E: torch.Tensor, rtol: float = DIVERSITY_RTOL) -> torch.Tensor:
    """Orthonormal basis [D, r] of E's column space (float64); directions with a singular value
    below rtol * sigma_max are dropped. An all-zero E gives an empty basis [D, 0]."""
    with single_thread():
        u, s, _ = torch.linalg.svd(E.to(torch.float64), full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return u[:, :0]
    return u[:, s > rtol * s[0]]


def basis_cosines(u_a: torch.Tensor, u_b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between two orthonormal bases, descending."""
    if u_a.shape[1] == 0 or u_b.shape[1] == 0:
        raise ValueError("diversity is undefined for an all-zero embedding set")
    # Rounding can push a cosine a hair above 1.
    with single_thread():
        return torch.linalg.svdvals(u_a.T @ u_b).clamp(0.0, 1.0)


def principal_angle_cosines(
    E_a, E_b, rtol: float = DIVERSITY_RTOL, method: str = "auto"
) -> torch.Tensor:
    """Cosines of the principal angles between the column spaces of E_a [D, K_a] and E_b [D, K_b]:
    the singular values of U_a^T U_b with U the left singular vectors (Section 5.3), descending.
    Computed on the :func:`compact_factor` of [E_a, E_b], so tall sets cost one pass."""
    E_a, E_b = as_matrix(E_a, "E_a"), as_matrix(E_b, "E_b")
    if E_a.dim() != 2 or E_b.dim() != 2:
        raise ValueError(
            f"E_a and E_b must be matrices [D, K], got {tuple(E_a.shape)} and {tuple(E_b.shape)}"
        )
    if E_a.shape[0] != E_b.shape[0]:
        raise ValueError(
            f"E_a and E_b must have the same rows (one field), got {E_a.shape[0]} "
            f"and {E_b.shape[0]}"
        )
    both = torch.cat([E_a.to(torch.float64), E_b.to(torch.float64)], dim=1)
    r = compact_factor(both, method)
    k_a = E_a.shape[1]
    return basis_cosines(column_basis(r[:, :k_a], rtol), column_basis(r[:, k_a:], rtol))


def diversity_from_cosines(cos: torch.Tensor) -> float:
    """1 - ||cos||_1 / K with K the number of cosines (the smaller column-space dimension)."""
    return float(1.0 - cos.sum() / cos.numel())


def embedding_diversity(E_a, E_b, rtol: float = DIVERSITY_RTOL, method: str = "auto") -> float:
    """div(E_a, E_b) = 1 - ||cos(phi)||_1 / K (Section 5.3, Appendix F): 0 when both sets span the
    same column space, 1 when the spaces are orthogonal.

    K is the dimension of the smaller column space: the embedding size for full-rank sets, as in
    the paper. (Directions weaker than ``rtol`` times a set's strongest one are not counted, so
    two identical rank-deficient sets still have diversity 0.)
    """
    return diversity_from_cosines(principal_angle_cosines(E_a, E_b, rtol, method))


def pearson(a, b) -> float:
    """Pearson correlation of two equally long 1-D sequences (nan when one is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(
            f"pearson needs two sequences of equal length >= 2, got {a.size} and {b.size}"
        )
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")
