"""The CPU pooled lookup (lookup fused with FwFM or FM pooling) against its alternatives, variants
interleaved in one process (docs/cpu.md).

    PYTHONPATH=$PWD python bench/cpu_pooling.py [--fields 39 16] [--repeats 5] [--fm]
                                                [--full-table] [--no-compile]

NFwFM's shapes: B=4096, M=4 sets of K=50, float32, the first N fields of the Criteo Kaggle
cardinalities, each divided by 100 (at least 2; bench/'s CPU size, ~11k rows at N=39) unless
--full-table (~1.09M rows: the dense table gradient, the same for every variant, then dominates
fwd+bwd). Forward and forward+backward (table and field-weight gradients) of fastme's
backend="cpu", backend="reference" and torch.compile of the reference (inductor), and the
reference's pooling written as one batched matmul over the sets (``bmm``, a torch-only
reformulation, for comparison). Prints median milliseconds, GFLOP/s (bench/op_cost.py's FLOPs)
and each variant's speed-up over the reference (median of the per-round ratios).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from cpu_lookup import cpu_model
from op_cost import pooled_lookup_flops

from fastme import ops
from fastme._extension import load
from fastme.distributed.cost import CRITEO_KAGGLE_FIELD_DIMS
from fastme.ops import reference

B, M, K = 4096, 4, 50


def bmm_pooled_lookup(table, indices, offsets, field_weights=None):
    """The reference's lookup, then FwFM pooling as R e per set, one batched matmul over the
    sets with samples and K as columns: no [B, M, N, N, K]-sized einsum intermediates."""
    emb = reference.multi_embedding_lookup(table, indices, offsets)
    if field_weights is None:
        return reference.fm_pooling(emb)
    b, m, n, k = emb.shape
    e = emb.permute(1, 2, 0, 3).reshape(m, n, b * k)
    return (e * torch.bmm(field_weights, e)).sum(1).reshape(m, b, k).transpose(0, 1)


def variant(fn, inputs, grad_out, backward):
    leaves = [t for t in inputs if torch.is_tensor(t) and t.requires_grad]

    def run():
        out = fn(*inputs)
        if backward:
            torch.autograd.grad(out, leaves, grad_out)
        return out

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=int, nargs="+", default=[39, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fm", action="store_true", help="FM pooling instead of FwFM")
    parser.add_argument("--full-table", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    ext = load()
    print(
        f"CPU: {cpu_model()}; ISA of the CPU kernels: {ext.cpu_isa()}; "
        f"threads: {torch.get_num_threads()}; torch {torch.__version__}"
    )
    ops.set_bounds_check("off")
    weighted = not args.fm
    print(f"{'N':>3} {'pass':>8} {'variant':>10} {'ms':>9} {'GFLOP/s':>8} {'vs ref':>7}")
    for n in args.fields:
        dims = [d if args.full_table else max(2, d // 100) for d in CRITEO_KAGGLE_FIELD_DIMS[:n]]
        g = torch.Generator().manual_seed(0)
        dims_t = torch.tensor(dims)
        offsets = torch.cumsum(dims_t, 0) - dims_t
        indices = (torch.rand(B, n, generator=g, dtype=torch.float64) * dims_t).long()
        table = torch.randn(sum(dims), M, K, generator=g) * 0.1
        weights = torch.randn(M, n, n, generator=g) / n
        grad_out = torch.randn(B, M, K, generator=g)
        for backward in (False, True):
            t = table.requires_grad_(backward)
            w = weights.requires_grad_(backward)
            inputs = (t, indices, offsets, *((w,) if weighted else ()))
            fns = {
                "cpu": lambda *a: ops.pooled_lookup(*a, backend="cpu"),
                "reference": lambda *a: ops.pooled_lookup(*a, backend="reference"),
                "bmm": bmm_pooled_lookup,
            }
            if not args.no_compile:
                fns["compile"] = torch.compile(reference.pooled_lookup, dynamic=False)
            runs = {name: variant(fn, inputs, grad_out, backward) for name, fn in fns.items()}
            with torch.no_grad() if not backward else torch.enable_grad():
                expected = runs["reference"]()
                for run in runs.values():  # warm up (compiles) and check
                    torch.testing.assert_close(run(), expected, rtol=1e-3, atol=1e-3)
                times = {name: [] for name in runs}
                for r in range(args.repeats):
                    names = list(runs)
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        start = time.perf_counter()
                        runs[name]()
                        times[name].append(time.perf_counter() - start)
            flops = pooled_lookup_flops(
                B, n, M, K, weighted=weighted, direction="both" if backward else "forward"
            )
            for name, ts in times.items():
                ms = statistics.median(ts) * 1e3
                ratio = statistics.median(
                    ref / mine for ref, mine in zip(times["reference"], ts, strict=True)
                )
                print(
                    f"{n:>3} {'fwd+bwd' if backward else 'fwd':>8} {name:>10} {ms:>9.1f} "
                    f"{flops / ms / 1e6:>8.1f} {ratio:>6.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
