"""ME-DCNv2 (and ME-NFwFM) inference on the CPU, variants interleaved in one process
(docs/cpu.md).

    PYTHONPATH=$PWD python bench/cpu_inference.py [--models dcnv2 nfwfm] [--scales 1 4]
        [--batch 4096] [--repeats 5] [--threads N] [--no-compile] [--no-onnx]

Criteo Kaggle cardinalities (39 fields, ~1.09M rows), the paper's ME-DCNv2 (``scale`` sets of
K=10, 4 cross layers, hidden 400) or ME-NFwFM (its FwFM pooling per set), random weights with
non-trivial BatchNorm statistics, eval mode under ``torch.inference_mode()``; fp32 and
``torch.autocast("cpu", dtype=torch.bfloat16)``.
Variants: fastme's ``backend="reference"`` (plain PyTorch: the eager baseline), ``backend="cpu"``,
``torch.compile`` of the reference model, and ONNX Runtime on the model exported by
``torch.onnx.export`` (fp32; as ``fastme export`` does) when onnxruntime is installed. Each
round runs every variant once, in turn; prints the median and best milliseconds per batch and
samples/s, and the CPU model, its ISA (AMX / AVX-512 / AVX2) and the load average before and
after (timings on a loaded machine are indicative only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import torch

from fastme._allocator import keep_freed_memory
import fastme.models as fm
from fastme._extension import load
from fastme._machine import cpu_description
from fastme.distributed.cost import CRITEO_KAGGLE_FIELD_DIMS

FIELD_DIMS = tuple(CRITEO_KAGGLE_FIELD_DIMS)


def cpu_line() -> str:
    return f"{cpu_description()}; fastme kernels: {load().cpu_isa()}"


def build_model(name: str, scale: int, backend: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = fm.build(name, FIELD_DIMS, scale=scale, multi=True, backend=backend)
    for module in model.modules():  # trained-looking BatchNorm statistics, not the identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def onnx_variant(model, x, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="fastme-bench-"), "model.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, dynamo=True, input_names=["x"], verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["dcnv2"], choices=["dcnv2", "nfwfm"])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's allocator defaults (else its thresholds are raised as the fastme "
        "command line raises them: fastme/_allocator.py)",
    )
    args = parser.parse_args()
    kept = not args.default_malloc and keep_freed_memory()
    malloc = "glibc's thresholds raised" if kept else "glibc's defaults"
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"CPU: {cpu_line()}; threads: {threads}; torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.2f}"
        f"; allocator: {malloc}"
    )
    g = torch.Generator().manual_seed(0)
    dims = torch.tensor(FIELD_DIMS)
    x = (torch.rand(args.batch, len(dims), generator=g, dtype=torch.float64) * dims).long()
    print(
        f"{'model':>10} {'prec':>5} {'variant':>10} {'median ms':>10} {'best ms':>8} "
        f"{'samples/s':>10}"
    )
    cases = [(name, scale) for name in args.models for scale in args.scales]
    for name, scale in cases:
        reference = build_model(name, scale, "reference")
        cpu = build_model(name, scale, "cpu")
        variants = {}
        for prec in ("fp32", "bf16"):

            def ctx(prec=prec):
                if prec == "bf16":
                    return torch.autocast("cpu", dtype=torch.bfloat16)
                return contextlib.nullcontext()

            def call(model, ctx=ctx):
                def forward():
                    with torch.inference_mode(), ctx():
                        return model(x)

                return forward

            variants[(prec, "reference")] = call(reference)
            variants[(prec, "cpu")] = call(cpu)
            if not args.no_compile:
                variants[(prec, "compile")] = call(torch.compile(reference, dynamic=False))
        if not args.no_onnx:
            run = onnx_variant(reference, x, threads)
            if run is not None:
                variants[("fp32", "onnxrt")] = run
        with torch.inference_mode():  # the eager variants agree before they are timed
            expect = reference(x)
            torch.testing.assert_close(cpu(x), expect, rtol=1e-4, atol=1e-4)
        for run in variants.values():  # warm up (compiles)
            run()
        times = {key: [] for key in variants}
        for _ in range(args.repeats):
            for key, run in variants.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
        label = f"ME-{'DCNv2' if name == 'dcnv2' else 'NFwFM'} x{scale}"
        for (prec, variant), ts in sorted(times.items()):
            ms = statistics.median(ts) * 1e3
            print(
                f"{label:>10} {prec:>5} {variant:>10} {ms:>10.1f} "
                f"{min(ts) * 1e3:>8.1f} {args.batch / ms * 1e3:>10.0f}"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
