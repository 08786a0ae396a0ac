"""The CPU cross network (per-set DCNv2, 4 layers) against its alternatives, variants interleaved in
one process (docs/cpu.md).

    PYTHONPATH=$PWD python bench/cpu_cross.py [--cases criteo train se] [--repeats 5]
                                              [--precision fp32 bf16] [--no-compile]

Cases (B, M, D): ``criteo`` 4096 x 4 x 390 (39 fields, K=10), ``train`` 512 x 4 x 160 (the
built-in data's 16 fields, ME-DCNv2 x4's training batch), ``se`` 512 x 1 x 640 (SE-DCNv2, K=40).
Forward and forward+backward (gradients of x0, weight and bias) in float32, and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (float32 inputs and parameters). Variants:
fastme's backend="cpu" and backend="reference", torch.compile of the reference (inductor), and
``mbd``: the reference rewritten in plain torch on an [M, B, D] layout (one ``baddbmm`` per layer
with the bias fused, one ``addcmul``; autograd by torch), for comparison. Prints median
milliseconds, GFLOP/s (bench/op_cost.py's FLOPs) and each variant's speed-up over the reference
(median of the per-round ratios), and the 1-minute load average before each case.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
from cpu_lookup import cpu_model
from op_cost import cross_network_flops

from fastme import ops
from fastme._extension import load
from fastme.ops import reference

CASES = {"criteo": (4096, 4, 390), "train": (512, 4, 160), "se": (512, 1, 640)}
LAYERS = 4


def mbd_cross_network(x0, weight, bias):
    """The sets as the batch of one baddbmm per layer on [M, B, D] (bias fused into the GEMM),
    x0 * z + x as one addcmul; transposed in and out."""
    x0t = x0.transpose(0, 1).contiguous()
    x = x0t
    for w, b in zip(weight.unbind(0), bias.unbind(0)):
        z = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        x = torch.addcmul(x, x0t, z)
    return x.transpose(0, 1)


def variant(fn, inputs, grad_out, backward, bf16):
    leaves = [t for t in inputs if t.requires_grad]

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = fn(*inputs)
        if backward:
            torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
        return out

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    ext = load()
    print(
        f"CPU: {cpu_model()}; ISA of the CPU kernels: {ext.cpu_isa()}; "
        f"threads: {torch.get_num_threads()}; torch {torch.__version__}"
    )
    header = ("case", "prec", "pass", "variant", "ms", "GFLOP/s", "vs ref")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 4, 8, 10, 9, 8, 7), strict=True)))
    for case in args.cases:
        torch._dynamo.reset()  # a fresh compile per case: no recompile limit, no fallback to eager
        b, m, d = CASES[case]
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(b, m, d, generator=g)
        weight = torch.randn(LAYERS, m, d, d, generator=g) / d**0.5
        bias = torch.randn(LAYERS, m, d, generator=g) * 0.1
        grad_out = torch.randn(b, m, d, generator=g)
        for precision in args.precision:
            bf16 = precision == "bf16"
            for backward in (False, True):
                if ("fwd+bwd" if backward else "fwd") not in args.passes:
                    continue
                inputs = tuple(t.detach().requires_grad_(backward) for t in (x0, weight, bias))
                fns = {
                    "cpu": lambda *a: ops.cross_network(*a, backend="cpu"),
                    "reference": lambda *a: ops.cross_network(*a, backend="reference"),
                    "mbd": mbd_cross_network,
                }
                if not args.no_compile:
                    fns["compile"] = torch.compile(reference.cross_network, dynamic=False)
                runs = {
                    name: variant(fn, inputs, grad_out, backward, bf16) for name, fn in fns.items()
                }
                with torch.no_grad() if not backward else torch.enable_grad():
                    expected = runs["reference"]().double()
                    for name, run in runs.items():  # warm up (compiles) and check
                        error = (run().double() - expected).norm() / expected.norm()
                        assert error < (2e-2 if bf16 else 1e-5), (name, float(error))
                    times = {name: [] for name in runs}
                    load_avg = os.getloadavg()[0]
                    for r in range(args.repeats):
                        names = list(runs)
                        for name in names[r % len(names) :] + names[: r % len(names)]:
                            start = time.perf_counter()
                            runs[name]()
                            times[name].append(time.perf_counter() - start)
                flops = cross_network_flops(
                    b, m, d, LAYERS, direction="both" if backward else "forward"
                )
                for name, ts in times.items():
                    ms = statistics.median(ts) * 1e3
                    ratio = statistics.median(
                        ref / mine for ref, mine in zip(times["reference"], ts, strict=True)
                    )
                    print(
                        f"{case:>6} {precision:>4} {'fwd+bwd' if backward else 'fwd':>8} "
                        f"{name:>10} {ms:>9.1f} {flops / ms / 1e6:>8.1f} {ratio:>6.2f}x"
                        f"   (load {load_avg:.2f})",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
