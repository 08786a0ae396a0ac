"""The table update alone (the sparse table optimizers' step after backward), variants
interleaved in one process (docs/cpu.md, docs/training.md "Table optimizers").

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/cpu_table_optim.py [--repeats 10]

M=4 sets of K=10, 39 fields, float32, B=512 and 4096, on two tables: the built-in synthetic
data's (generator v1, min_count=0, 294,074 rows; batches are its rows, Zipf values) and a
Criteo-like one (Criteo Kaggle cardinalities, ~1.09M rows, values uniform per field). The
gradient is what the lookup's backward hands the table: one (row, [M*K] values) pair per
(sample, field). Per optimizer kind, median ms of

- ``coalesce``: ``torch.sparse_coo_tensor(pairs).coalesce()`` (sort + unique + sum: what the
  sparse-gradient lookup's backward does today);
- ``torch update``: the torch path's step on the coalesced gradient (index_select / index_copy_
  / index_add_);
- ``torch total``: the two above (today's cost of the table update);
- ``fused raw``: the fused CPU kernel on the raw pairs (it sums duplicates itself);
- ``fused coal``: the fused kernel on the coalesced gradient (update alone);
- ``fbgemm``: FBGEMM's CPU TBE with its fused EXACT_ROWWISE_ADAGRAD (one table per field,
  pooling NONE, one accumulator per row of M*K), its backward alone (which applies the update)
  from the same per-pair gradient, next to the rowwise_adagrad rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fastme._extension import load
from fastme._machine import cpu_description
from fastme.data import make_synthetic
from fastme.distributed.cost import CRITEO_KAGGLE_FIELD_DIMS
from fastme.train.table_optim import SPARSE_OPTIMIZERS

M, K = 4, 10


def fbgemm_backward(field_dims, indices, grad_pairs):
    """FBGEMM's fused row-wise Adagrad: a callable running its backward (the update), or None."""
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except ImportError:
        return None
    b, n = indices.shape
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(d, M * K, EmbeddingLocation.HOST, ComputeDevice.CPU) for d in field_dims],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        pooling_mode=PoolingMode.NONE,
        learning_rate=0.01,
        eps=1e-8,
    )
    values = indices.t().reshape(-1).contiguous()  # field-major, as TBE wants
    bag_offsets = torch.arange(n * b + 1)
    # The same pairs' gradients, in TBE's field-major output order.
    grad = grad_pairs.view(b, n, M * K).transpose(0, 1).reshape(n * b, M * K).contiguous()

    def run():
        out = tbe(values, bag_offsets)
        start = time.perf_counter()
        out.backward(grad)
        return time.perf_counter() - start

    return run


def cases(batches):
    synth = make_synthetic(max(batches) * 4, generator="v1", min_count=0)
    x_all = torch.as_tensor(synth.base_arrays()[0]).long()
    g = torch.Generator().manual_seed(0)
    dims = torch.tensor(CRITEO_KAGGLE_FIELD_DIMS)
    for name, field_dims in (("synthetic", synth.field_dims), ("criteo", dims.tolist())):
        for b in batches:
            if name == "synthetic":
                indices = x_all[:b]
            else:
                indices = (torch.rand(b, len(dims), generator=g, dtype=torch.float64) * dims).long()
            yield name, tuple(int(d) for d in field_dims), indices


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def variants_of(kind, table, raw, coalesced) -> dict:
    """Callables timing one table update each (seconds): see the module's doc."""
    cls = SPARSE_OPTIMIZERS[kind]
    ref = torch.nn.Parameter(table.clone())
    fus = torch.nn.Parameter(table.clone())
    ref_opt = cls(ref, 0.01, fused=False)
    fus_opt = cls(fus, 0.01, fused=True)

    def torch_update():
        ref.grad = coalesced
        ref_opt.step()

    def fused(grad):
        def run():
            fus.grad = grad
            fus_opt.step()

        return run

    return {
        "coalesce": lambda: timed(raw.coalesce),
        "torch upd": lambda: timed(torch_update),
        "fused raw": lambda: timed(fused(raw)),
        "fused coal": lambda: timed(fused(coalesced)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--kinds", nargs="+", default=list(SPARSE_OPTIMIZERS))
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    ext = load()
    print(
        f"CPU: {cpu_description()}; ISA of the CPU kernels: {ext.cpu_isa()}; threads: "
        f"{torch.get_num_threads()}; torch {torch.__version__}; load average at start "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"{'table':>9} {'rows':>9} {'B':>5} {'touched':>8} {'kind':>16} {'coalesce':>9} "
        f"{'torch upd':>9} {'torch tot':>9} {'fused raw':>9} {'fused coal':>10} {'fbgemm':>8} "
        f"{'tot/raw':>7}"
    )
    gen = torch.Generator().manual_seed(1)
    for name, field_dims, indices in cases(args.batch):
        b, n = indices.shape
        offsets = torch.tensor(field_dims).cumsum(0) - torch.tensor(field_dims)
        num_rows = sum(field_dims)
        rows = (indices + offsets).reshape(-1)
        grad_pairs = torch.randn(b * n, M * K, generator=gen) * 0.01
        raw = torch.sparse_coo_tensor(
            rows[None], grad_pairs.view(-1, M, K), (num_rows, M, K), check_invariants=False
        )
        coalesced = raw.coalesce()
        touched = coalesced._nnz()
        table = torch.randn(num_rows, M, K, generator=gen) * 0.01
        fb = fbgemm_backward(field_dims, indices, grad_pairs)
        for kind in args.kinds:
            variants = variants_of(kind, table, raw, coalesced)
            if fb is not None and kind == "rowwise_adagrad":
                variants["fbgemm"] = fb
            times = {v: [] for v in variants}
            for run in variants.values():  # warm up
                run()
            for _ in range(args.repeats):
                for v, run in variants.items():
                    times[v].append(run())
            med = {v: statistics.median(ts) * 1e3 for v, ts in times.items()}
            total = (
                statistics.median([a + c for a, c in zip(times["coalesce"], times["torch upd"])])
                * 1e3
            )
            fbms = f"{med['fbgemm']:8.2f}" if "fbgemm" in med else f"{'':>8}"
            print(
                f"{name:>9} {num_rows:>9,} {b:>5} {touched:>8,} {kind:>16} {med['coalesce']:9.2f} "
                f"{med['torch upd']:9.2f} {total:9.2f} {med['fused raw']:9.2f} "
                f"{med['fused coal']:10.2f} {fbms} {total / med['fused raw']:6.1f}x",
                flush=True,
            )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
