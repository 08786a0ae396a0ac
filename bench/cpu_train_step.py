"""One training step (forward, backward, fused Adam) of ME-DCNv2 on the built-in synthetic data
with backend="reference" against backend="cpu", fp32 and under bf16 autocast, variants interleaved
in one process (docs/cpu.md).

    PYTHONPATH=$PWD python bench/cpu_train_step.py [--scale 4] [--batch 512] [--repeats 10]

The data's 16 fields (field dims of ``make_synthetic``'s default, kept values), K=10 per set,
the paper's Adam (lr 1e-3, weight decay 1e-6, fused as the trainer runs it). Prints median
milliseconds per step and the speed-up over the fp32 reference (median of per-round ratios),
and the 1-minute load average.
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

import fastme.models
from fastme._extension import load
from fastme.data import make_synthetic


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--multi", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    print(
        f"CPU: {cpu_model()}; ISA of the CPU kernels: {load().cpu_isa()}; "
        f"threads: {torch.get_num_threads()}; torch {torch.__version__}"
    )
    data = make_synthetic(20_000, seed=0)
    torch.manual_seed(0)
    base = fastme.models.build("dcnv2", data.field_dims, args.scale, multi=args.multi)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        rows = torch.randint(0, len(data.y), (args.batch,), generator=g)
        batches.append(
            (
                torch.as_tensor(data.x[rows.numpy()]).long(),
                torch.as_tensor(data.y[rows.numpy()]).float(),
            )
        )
    steps = {}
    for backend in ("reference", "cpu"):
        for precision in ("fp32", "bf16"):
            model = copy.deepcopy(base)
            model.backend = backend
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6, fused=True)

            def step(x, y, model=model, opt=opt, bf16=precision == "bf16"):
                opt.zero_grad(set_to_none=True)
                with (
                    torch.autocast("cpu", dtype=torch.bfloat16)
                    if bf16
                    else contextlib.nullcontext()
                ):
                    logits = model(x)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
                loss.backward()
                opt.step()

            steps[f"{backend} {precision}"] = step
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
    print(f"{kind}-DCNv2 x{args.scale}, B={args.batch}, load average {load_avg:.2f}")
    for name, ts in times.items():
        ratio = statistics.median(
            ref / mine for ref, mine in zip(times["reference fp32"], ts, strict=True)
        )
        print(f"{name:>16} {statistics.median(ts) * 1e3:>8.1f} ms {ratio:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
