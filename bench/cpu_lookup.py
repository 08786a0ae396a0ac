"""The CPU lookup against its alternatives, variants interleaved in one process (docs/cpu.md).

    PYTHONPATH=$PWD python bench/cpu_lookup.py [--sets 1 4 10] [--repeats 10] [--no-compile]

Criteo Kaggle cardinalities (~1.09M rows), 39 fields, K=10, B=4096, float32; forward and
forward+backward (the dense table gradient) of fastme's backend="cpu", backend="reference",
torch.compile of the reference (inductor) and FBGEMM's CPU DenseTableBatchedEmbeddingBagsCodegen
(pooling NONE, one table per field) when fbgemm_gpu is installed; forward+backward also as
``cpu sparse``: the lookup with ``sparse_grad=True`` on the cpu backend, whose backward hands the
table the raw (row, values) pairs that the trainer's table optimizers read (no table-sized
gradient; the update itself is bench/cpu_table_optim.py). Prints median milliseconds and
GB/s (bytes a lookup must move: rows read and written; for the backward also the gradient read
and the dense table gradient written) next to a copy probe's GB/s (read + write counted).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastme._allocator import keep_freed_memory
from fastme import ops
from fastme._extension import load
from fastme._machine import cpu_description as cpu_model  # noqa: F401 (for the other benches)
from fastme.distributed.cost import CRITEO_KAGGLE_FIELD_DIMS
from fastme.ops import reference

FIELD_DIMS = tuple(CRITEO_KAGGLE_FIELD_DIMS)
N, K, B = len(FIELD_DIMS), 10, 4096
ROWS = sum(FIELD_DIMS)


def copy_probe(repeats: int) -> float:
    src = torch.empty(64 * 2**20).uniform_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / min(times) / 1e9


def fbgemm_variant(table, indices, backward):
    try:
        from fbgemm_gpu import split_table_batched_embeddings_ops_training as training
    except ImportError:
        return None
    m = table.shape[1]
    tbe = training.DenseTableBatchedEmbeddingBagsCodegen(
        [(d, m * K) for d in FIELD_DIMS], pooling_mode=training.PoolingMode.NONE, use_cpu=True
    )
    with torch.no_grad():
        tbe.weights.copy_(table.detach().reshape(-1))
    tbe.weights.requires_grad_(backward)
    values = indices.t().reshape(-1).contiguous()
    bag_offsets = torch.arange(N * B + 1)
    grad_out = None

    def run():
        nonlocal grad_out
        out = tbe(values, bag_offsets)
        if backward:
            if grad_out is None:
                grad_out = torch.randn_like(out)
            torch.autograd.grad(out, [tbe.weights], grad_out)
        return out

    return run


def fastme_lookup(backend, sparse_grad=False):
    return lambda *args: ops.multi_embedding_lookup(*args, backend=backend, sparse_grad=sparse_grad)


def timed_call(fn, table, indices, offsets, grad_out, backward):
    """One lookup (and its table gradient when ``backward``)."""

    def run():
        out = fn(table, indices, offsets)
        if backward:
            torch.autograd.grad(out, [table], grad_out)
        return out

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's allocator defaults (else its thresholds are raised as the fastme "
        "command line raises them: fastme/_allocator.py)",
    )
    args = parser.parse_args()
    kept = not args.default_malloc and keep_freed_memory()
    malloc = "glibc's thresholds raised" if kept else "glibc's defaults"
    ext = load()
    print(
        f"CPU: {cpu_model()}; ISA of the CPU kernels: {ext.cpu_isa()}; "
        f"threads: {torch.get_num_threads()}; torch {torch.__version__}"
        f"; allocator: {malloc}"
    )
    copy = copy_probe(args.repeats)
    print(f"copy probe: {copy:.1f} GB/s (read + write)")
    g = torch.Generator().manual_seed(0)
    dims = torch.tensor(FIELD_DIMS)
    offsets = torch.cumsum(dims, 0) - dims
    indices = (torch.rand(B, N, generator=g, dtype=torch.float64) * dims).long()
    print(f"{'M':>3} {'pass':>8} {'variant':>10} {'ms':>9} {'GB/s':>7} {'% copy':>7}")
    for m in args.sets:
        table = torch.randn(ROWS, m, K, generator=g) * 0.1
        grad_out = torch.randn(B, m, N, K, generator=g)
        for backward in (False, True):
            t = table.requires_grad_(backward)

            variants = {
                "cpu": timed_call(fastme_lookup("cpu"), t, indices, offsets, grad_out, backward),
                "reference": timed_call(
                    fastme_lookup("reference"), t, indices, offsets, grad_out, backward
                ),
            }
            if backward:
                variants["cpu sparse"] = timed_call(
                    fastme_lookup("cpu", sparse_grad=True), t, indices, offsets, grad_out, True
                )
            if not args.no_compile:
                compiled = torch.compile(reference.multi_embedding_lookup, dynamic=False)
                variants["compile"] = timed_call(compiled, t, indices, offsets, grad_out, backward)
            fb = fbgemm_variant(table, indices, backward)
            if fb is not None:
                variants["fbgemm"] = fb
            with torch.no_grad() if not backward else torch.enable_grad():
                for run in variants.values():  # warm up (compiles)
                    run()
                times = {name: [] for name in variants}
                for _ in range(args.repeats):
                    for name, run in variants.items():
                        start = time.perf_counter()
                        run()
                        times[name].append(time.perf_counter() - start)
            moved = 2 * B * N * m * K * 4  # rows read, [B, M, N, K] written
            if backward:
                moved += B * N * m * K * 4  # grad read
            for name, ts in times.items():
                ms = statistics.median(ts) * 1e3
                # written: the dense table gradient, or the pairs' values and rows (sparse)
                dense = ROWS * m * K * 4
                sparse = B * N * (m * K * 4 + 8)
                moved_here = moved + (0 if not backward else sparse if "sparse" in name else dense)
                gbs = moved_here / (ms / 1e3) / 1e9
                print(
                    f"{m:>3} {'fwd+bwd' if backward else 'fwd':>8} {name:>10} {ms:>9.2f} "
                    f"{gbs:>7.1f} {100 * gbs / copy:>6.0f}%"
                )


if __name__ == "__main__":
    main()
