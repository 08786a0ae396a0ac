"""Training step time of ME-DCNv2 with each table optimizer against the dense Adam of before
(dense table gradient + torch's fused Adam over every parameter), interleaved in one process.

    PYTHONPATH=$PWD python bench/table_optim_step.py [--scale 4] [--batch 512] [--rounds 5]

Batches are rows of the built-in synthetic data (generator v1: 39 Criteo-like fields, Zipf
values, 294,074 table rows) with ``min_count=0``, so the table has every raw value's row. All
variants train the same model object (the weights' values do not change the cost); each has its
own optimizer state. Prints each variant's step times (median, min, quartiles) and its speed-up
by the median and by the first quartile (the steadier one on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from fastme.data import make_synthetic
from fastme.models import build
from fastme.train.table_optim import TABLE_OPTIMIZERS, ModelOptimizer


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
        flags = next(line for line in out.splitlines() if line.startswith("Flags"))
        isa = "AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
        return f"{name} ({isa}, {torch.get_num_threads()} threads)"
    except (OSError, StopIteration, subprocess.CalledProcessError):
        return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    args = p.parse_args()

    data = make_synthetic(args.batch * 64, generator="v1", min_count=0)
    x_all, y_all = (torch.as_tensor(a) for a in data.base_arrays())
    batches = [
        (x_all[i : i + args.batch].long(), y_all[i : i + args.batch].float())
        for i in range(0, len(x_all) - args.batch + 1, args.batch)
    ]
    torch.manual_seed(0)
    model = build("dcnv2", data.field_dims, args.scale, multi=True)
    table = model.embedding.weight
    print(
        f"ME-DCNv2 x{args.scale}, batch {args.batch}, {table.shape[0]:,} table rows, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; {cpu_model()}; "
        f"torch {torch.__version__}"
    )

    def dense_before():
        return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6, fused=True)

    variants = {"dense adam (before)": (dense_before(), False)}
    for kind in TABLE_OPTIMIZERS:
        opt = ModelOptimizer(model, kind, lr=1e-3, weight_decay=1e-6, fused=True)
        variants[kind] = (opt, True)
    touched = [len(torch.unique(x + model.embedding.offsets)) for x, _ in batches[:8]]
    print(f"distinct rows per batch: {statistics.mean(touched):,.0f}")

    step_no = 0

    def step(opt, sparse):
        nonlocal step_no
        x, y = batches[step_no % len(batches)]
        step_no += 1
        model.sparse_table = sparse
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for opt, sparse in variants.values():  # warm-up: allocate every state
        for _ in range(2):
            step(opt, sparse)
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (opt, sparse) in variants.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(opt, sparse)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["dense adam (before)"])
    print(
        f"{'variant':22s} {'median ms':>10s} {'min':>7s} {'p25':>7s} {'p75':>7s} "
        f"{'speed-up (median, p25)':>24s}"
    )
    base25 = statistics.quantiles(times["dense adam (before)"], n=4)[0]
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        med = statistics.median(t)
        print(
            f"{name:22s} {med * 1e3:10.1f} {min(t) * 1e3:7.1f} {q[0] * 1e3:7.1f} "
            f"{q[2] * 1e3:7.1f} {base / med:14.2f}x {base25 / q[0]:7.2f}x"
        )


if __name__ == "__main__":
    main()
