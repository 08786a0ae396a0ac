"""The toy experiment of Evidence II (Section 4.1, Appendix G, Figure 4).

N = 3 fields, D1 = D2 = 100. Every pair (x1, x2) is one sample, with x3 drawn uniformly from
{0..D3-1} and a label drawn uniformly from {0, 1}, so the data on X1 x X2 is the same whatever D3.
All tables start N(0, 1); E2 and E3 stay fixed and only E1 is trained, by full-batch gradient
descent with learning rate 1 on the mean binary cross-entropy of the FM-style logit
h = e1.e2 + e1.e3 + e2.e3. A small D3 (3 < K) makes E3 low-abundance; a large one (100 >> K) not.
The paper reports that IA(E1) ends lower when E1 interacts with the low-abundance E3.

The paper does not give K; we use K = 10, the base embedding size of every other experiment, which
satisfies both D3 = 3 < K and D3 = 100 >> K.
"""

from __future__ import annotations

import numpy as np
import torch

from fastme.analysis.metrics import information_abundance, single_thread

DEFAULTS = dict(
    d3_values=(3, 100),
    embed_dim=10,
    iterations=5000,
    lr=1.0,
    seeds=(0, 1, 2),
    num_rows=100,
    record_every=10,
)


def _run_one(
    d3: int, embed_dim: int, iterations: int, lr: float, seed: int, num_rows: int, record_every: int
) -> dict:
    # E1, E2 and the labels depend on the seed only, so the two D3 settings of one seed differ
    # only in E3 and x3 (a paired comparison).
    g = torch.Generator().manual_seed(seed)
    e1 = torch.randn(num_rows, embed_dim, generator=g, dtype=torch.float64)
    e2 = torch.randn(num_rows, embed_dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (num_rows, num_rows), generator=g).to(torch.float64)
    g3 = torch.Generator().manual_seed(seed * 1_000_003 + d3)
    e3 = torch.randn(d3, embed_dim, generator=g3, dtype=torch.float64)
    x3 = torch.randint(0, d3, (num_rows, num_rows), generator=g3)

    # Sample (a, b) is x1 = a, x2 = b. h[a, b] = e1[a].(e2[b] + e3[x3[a, b]]) + e2[b].e3[x3[a, b]];
    # the last term does not depend on E1. The gradient is written out: it is two small einsums,
    # much faster than autograd over 5000 steps.
    other = e2[None, :, :] + e3[x3]  # [D1, D2, K]
    const = (e2[None, :, :] * e3[x3]).sum(-1)  # [D1, D2]
    n = y.numel()
    iters, ia, loss = [], [], []
    for t in range(iterations + 1):
        h = torch.einsum("ak,abk->ab", e1, other) + const
        if t % record_every == 0 or t == iterations:
            iters.append(t)
            ia.append(float(information_abundance(e1, "exact")))
            loss.append(float(torch.nn.functional.binary_cross_entropy_with_logits(h, y)))
        if t == iterations:
            break
        dh = (torch.sigmoid(h) - y) / n  # d mean-BCE / dh
        e1 = e1 - lr * torch.einsum("ab,abk->ak", dh, other)
    return {"iterations": iters, "ia": ia, "loss": loss}


def run_toy(
    d3_values=DEFAULTS["d3_values"],
    embed_dim: int = DEFAULTS["embed_dim"],
    iterations: int = DEFAULTS["iterations"],
    lr: float = DEFAULTS["lr"],
    seeds=DEFAULTS["seeds"],
    num_rows: int = DEFAULTS["num_rows"],
    record_every: int = DEFAULTS["record_every"],
) -> dict:
    """Run the toy experiment for each D3 and seed. Returns a JSON-ready dict: ``config`` and, per
    D3 (key ``str(D3)``), the recorded ``iterations``, ``ia`` [seeds][points], ``loss``, and the
    ``mean``/``std`` over seeds of IA, plus ``final_ia_mean``/``final_ia_std``."""
    d3_values = [int(d) for d in d3_values]
    seeds = [int(s) for s in seeds]
    for name, v in (
        ("embed_dim", embed_dim),
        ("iterations", iterations),
        ("num_rows", num_rows),
        ("record_every", record_every),
    ):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not d3_values or min(d3_values) < 1:
        raise ValueError(f"d3_values must be positive integers, got {d3_values}")
    if not seeds:
        raise ValueError("seeds must not be empty")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    result = {
        "config": {
            "d3_values": d3_values,
            "embed_dim": int(embed_dim),
            "iterations": int(iterations),
            "lr": float(lr),
            "seeds": seeds,
            "num_rows": int(num_rows),
            "record_every": int(record_every),
            "loss": "mean binary cross-entropy on h = sum_{i<j} e_i.e_j",
        },
        "runs": {},
    }
    with single_thread():  # every op here is tiny
        all_runs = {
            d3: [
                _run_one(
                    d3,
                    int(embed_dim),
                    int(iterations),
                    float(lr),
                    s,
                    int(num_rows),
                    int(record_every),
                )
                for s in seeds
            ]
            for d3 in d3_values
        }
    for d3, runs in all_runs.items():
        ia = np.array([r["ia"] for r in runs])
        result["runs"][str(d3)] = {
            "iterations": runs[0]["iterations"],
            "ia": ia.tolist(),
            "loss": [r["loss"] for r in runs],
            "mean": ia.mean(0).tolist(),
            "std": ia.std(0).tolist(),
            "final_ia_mean": float(ia[:, -1].mean()),
            "final_ia_std": float(ia[:, -1].std()),
        }
    return result
