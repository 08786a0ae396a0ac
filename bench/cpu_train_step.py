"""One training step (forward, backward, fused Adam) of ME-DCNv2 on the built-in synthetic data
with backend="reference" against backend="cpu", fp32 and under bf16 autocast, variants interleaved
in one process (docs/cpu.md).

    PYTHONPATH=$PWD python bench/cpu_train_step.py [--scale 4] [--batch 512] [--repeats 10]

``--data synthetic`` (default): the built-in data's 16 fields (field dims of ``make_synthetic``'s
default, kept values), batches of its rows. ``--data criteo``: the Criteo Kaggle cardinalities
(39 fields, ~1.09M rows: the table of the paper's setting, 174 MB at x4), values uniform per
field, labels random (the step's cost does not depend on them). K=10 per set,
the paper's Adam (lr 1e-3, weight decay 1e-6, fused as the trainer runs it). ``--table-optimizer``
picks the update(s): ``dense`` (torch's Adam on the dense table gradient, the step before the
sparse table optimizers) or a trainer ``--table-optimizer`` (``adam``: the exact Adam on the
table's sparse gradient; ``lazy_adam`` ... ``sgd``: fastme/train/table_optim.py, the fused CPU
kernel), each with every ``--backends`` x ``--precisions``. Prints median milliseconds per step
and the speed-up over the first variant (median of per-round ratios), and the 1-minute load
average.

    python bench/cpu_train_step.py --table-optimizer dense adam rowwise_adagrad --backends cpu
    python bench/cpu_train_step.py --variants reference:fp32:dense cpu:bf16:rowwise_adagrad
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time

import torch
from cpu_lookup import cpu_model

from fastme._allocator import keep_freed_memory
import fastme.models
from fastme._extension import load
from fastme.data import make_synthetic
from fastme.distributed.cost import CRITEO_KAGGLE_FIELD_DIMS
from fastme.train.table_optim import TABLE_OPTIMIZERS, ModelOptimizer


def make_step(base, backend: str, bf16: bool, table_opt: str):
    """One training step of a copy of ``base``: ``table_opt`` "dense" is torch's fused Adam on
    the dense gradient, else the trainer's ModelOptimizer with that table optimizer."""
    model = copy.deepcopy(base)
    model.backend = backend
    if table_opt == "dense":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6, fused=True)
        sparse = contextlib.nullcontext
    else:
        opt = ModelOptimizer(model, table_opt, lr=1e-3, weight_decay=1e-6, fused=True)
        sparse = opt.sparse_gradients

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with sparse():
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                logits = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            loss.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--multi", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--data", choices=["synthetic", "criteo"], default="synthetic")
    parser.add_argument(
        "--table-optimizer",
        nargs="+",
        default=["dense"],
        choices=["dense", *TABLE_OPTIMIZERS],
        help="table update(s) to time (see the module's doc)",
    )
    parser.add_argument(
        "--backends", nargs="+", default=["reference", "cpu"], choices=["reference", "cpu"]
    )
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"]
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="BACKEND:PRECISION:UPDATE",
        help="time exactly these variants (e.g. reference:fp32:dense cpu:bf16:rowwise_adagrad) "
        "instead of every --backends x --precisions x --table-optimizer: fewer models in "
        "memory, so each keeps more of its table and state in the caches between its steps",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's allocator defaults (else its thresholds are raised as the fastme "
        "command line raises them: fastme/_allocator.py)",
    )
    args = parser.parse_args()
    kept = not args.default_malloc and keep_freed_memory()
    malloc = "glibc's thresholds raised" if kept else "glibc's defaults"
    if args.variants:
        variants = [tuple(v.split(":")) for v in args.variants]
        for v in variants:
            if (
                len(v) != 3
                or v[0] not in ("reference", "cpu")
                or v[1] not in ("fp32", "bf16")
                or v[2] not in ("dense", *TABLE_OPTIMIZERS)
            ):
                parser.error(f"--variants: {':'.join(v)!r} is not BACKEND:PRECISION:UPDATE")
    else:
        variants = [
            (backend, precision, table_opt)
            for table_opt in args.table_optimizer
            for backend in args.backends
            for precision in args.precisions
        ]
    print(
        f"CPU: {cpu_model()}; ISA of the CPU kernels: {load().cpu_isa()}; "
        f"threads: {torch.get_num_threads()}; torch {torch.__version__}"
        f"; allocator: {malloc}"
    )
    g = torch.Generator().manual_seed(0)
    if args.data == "criteo":
        field_dims = list(CRITEO_KAGGLE_FIELD_DIMS)
        dims = torch.tensor(field_dims, dtype=torch.float64)

        def batch():
            x = torch.rand(args.batch, len(field_dims), generator=g, dtype=torch.float64) * dims
            return x.long(), torch.randint(0, 2, (args.batch,), generator=g).float()
    else:
        data = make_synthetic(20_000, seed=0)
        field_dims = data.field_dims

        def batch():
            rows = torch.randint(0, len(data.y), (args.batch,), generator=g).numpy()
            return torch.as_tensor(data.x[rows]).long(), torch.as_tensor(data.y[rows]).float()

    torch.manual_seed(0)
    base = fastme.models.build("dcnv2", field_dims, args.scale, multi=args.multi)
    batches = [batch() for _ in range(4)]
    steps = {}
    for backend, precision, table_opt in variants:
        name = f"{backend} {precision} {table_opt}"
        steps[name] = make_step(base, backend, precision == "bf16", table_opt)
    for step in steps.values():  # warm up
        step(*batches[0])
    times = {name: [] for name in steps}
    load_avg = os.getloadavg()[0]
    for r in range(args.repeats):
        names = list(steps)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            steps[name](*batches[r % len(batches)])
            times[name].append(time.perf_counter() - start)
    kind = "ME" if args.multi else "SE"
    print(
        f"{kind}-DCNv2 x{args.scale}, B={args.batch}, {args.data} fields "
        f"({sum(field_dims):,} table rows), load average {load_avg:.2f}"
    )
    for name, ts in times.items():
        first = next(iter(times.values()))
        ratio = statistics.median(ref / mine for ref, mine in zip(first, ts, strict=True))
        print(f"{name:>32} {statistics.median(ts) * 1e3:>8.1f} ms {ratio:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
