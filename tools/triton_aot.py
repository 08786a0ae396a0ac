"""Ahead-of-time compilation of every Triton kernel for a CUDA target, on a machine without a GPU.

The real launchers (lookup, FM, FwFM, cross network; forward and backward) run on CPU tensors
while Triton's driver is replaced by a stand-in that names the target GPU. Every launch
``kernel[grid](...)`` then compiles with Triton's own compiler, for every autotune configuration
that the pruner keeps, instead of running. What gets compiled is therefore exactly what the
launchers would launch on that GPU at that shape. Each binary is checked against the target's
shared-memory limit per block; its registers and stack frame (register spills) are read from the
cubin with Triton's bundled ``cuobjdump``.

    python tools/triton_aot.py [--arch 90 80] [--dtype float32 bfloat16 float64]

Must run without TRITON_INTERPRET=1 (the interpreter has no compiler). The batch size enters the
kernels only as a runtime integer, so a small batch (a multiple of 16, like B = 4096) compiles to
the binaries of the full-size problem; the tensors are never touched by a kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

import torch

# Largest dynamic shared memory one block may use (opt-in), bytes: A100 (sm_80), H100/H200 (sm_90).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}

# (name, fields N, embedding size K, sets M, cross layers L). Criteo: 39 fields; K = 10 is the
# paper's base size for most models, 50 NFwFM's; "wide" stands for feature sets of 100+ fields.
# Any N > 64 runs the FwFM kernels in tiles of 64 (or 32) fields, so N = 128 compiles to the
# binaries of N = 256 too (both multiples of 16).
SHAPES = [
    ("criteo-K10", 39, 10, 10, 3),
    ("criteo-K50", 39, 50, 10, 0),
    ("wide-N128", 128, 10, 10, 2),
]
BATCH = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclasses.dataclass
class Build:
    kernel: str
    config: str
    arch: int
    dtype: str
    shape: str
    shared: int = 0
    registers: int = -1
    stack: int = -1
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.shared <= SHARED_LIMIT[self.arch]


class _TargetDriver:
    """Stands in for Triton's CUDA driver: names the target; nothing is launched."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.arch  # one kernel cache per target

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes per thread: where ptxas spills registers) of the cubin's kernel."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    reg = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return int(reg.group(1)) if reg else -1, int(stack.group(1)) if stack else -1


def _config_name(kwargs: dict) -> str:
    keys = sorted(k for k in kwargs if k.isupper() and k not in ("ACC", "PREC", "UPCAST"))
    text = ",".join(f"{k}={kwargs[k]}" for k in keys)
    return f"{text},warps={kwargs.get('num_warps', 4)},stages={kwargs.get('num_stages', 3)}"


@contextlib.contextmanager
def _compiling(arch: int, dtype: str, shape: str, builds: list[Build]):
    """Within: every ``kernel[grid](...)`` compiles for ``arch`` (all kept autotune configs) and
    appends a Build, instead of launching."""
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import KernelInterface

    def compile_one(fn, args, kwargs, grid, config_kwargs):
        merged = {**kwargs, **config_kwargs}
        build = Build(fn.fn.__name__, _config_name(merged), arch, dtype, shape)
        try:
            compiled = fn.warmup(*args, grid=grid, **merged)
            build.shared = int(compiled.metadata.shared)
            build.registers, build.stack = _resource_usage(compiled.asm["cubin"])
        except Exception as exc:  # noqa: BLE001 - reported per kernel
            build.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
        builds.append(build)

    def getitem(self, grid):
        def launch(*args, **kwargs):
            if isinstance(self, Autotuner):
                self.nargs = dict(zip(self.arg_names, args))
                configs = self.prune_configs(kwargs)
                self.nargs = None
                for config in configs:
                    compile_one(self.fn, args, kwargs, grid, config.all_kwargs())
            else:
                compile_one(self, args, kwargs, grid, {})

        return launch

    saved_getitem, saved_driver = KernelInterface.__getitem__, driver._active
    KernelInterface.__getitem__ = getitem
    driver.set_active(_TargetDriver(arch))
    try:
        yield
    finally:
        KernelInterface.__getitem__ = saved_getitem
        driver._active = saved_driver


def _launch_all(shape, dtype: torch.dtype) -> None:
    """Run every launcher once at ``shape`` on CPU tensors (forward and backward)."""
    from fastme.ops.triton import cross, lookup, pooling

    _, n, k, m, layers = shape
    b = BATCH
    table = torch.empty((n * 7, m, k), dtype=dtype)
    indices = torch.zeros((b, n), dtype=torch.int64)
    offsets = torch.zeros((n,), dtype=torch.int64)
    weights = torch.empty((m, n, n), dtype=dtype)
    lookup.lookup_forward(table, indices, offsets)
    lookup.lookup_backward(torch.empty((b, m, n, k), dtype=dtype), indices, offsets, n * 7)
    pooled_grad = torch.empty((b, m, k), dtype=dtype)
    pooling.fm_forward(table, indices, offsets)
    pooling.fm_backward(pooled_grad, table, indices, offsets)
    pooling.fwfm_forward(table, indices, offsets, weights)
    pooling.fwfm_backward(pooled_grad, table, indices, offsets, weights)
    if layers:
        d = n * k
        weight = torch.empty((layers, m, d, d), dtype=dtype)
        bias = torch.empty((layers, m, d), dtype=dtype)
        x0 = torch.empty((b, m, d), dtype=dtype)
        out, states = cross.cross_forward(x0, weight, bias)
        cross.lookup_cross_forward(table, indices, offsets, weight, bias)
        cross.cross_backward(out, x0, weight, bias, states)


def all_kernels() -> set[str]:
    """Names of every Triton kernel (``*_kernel``) the fastme.ops.triton modules define."""
    from triton.runtime.jit import KernelInterface

    from fastme.ops.triton import cross, lookup, pooling

    names = set()
    for module in (cross, lookup, pooling):
        for name, value in vars(module).items():
            if name.endswith("_kernel") and isinstance(value, KernelInterface):
                names.add(name)
    return names


def missing_kernels(builds: list[Build]) -> list[str]:
    """(kernel, arch, dtype) combinations that no launcher compiled: launchers not exercised."""
    return [
        f"{name} sm_{arch} {dtype}"
        for name in sorted(all_kernels())
        for arch in sorted({b.arch for b in builds})
        for dtype in sorted({b.dtype for b in builds})
        if not any(b.kernel == name and b.arch == arch and b.dtype == dtype for b in builds)
    ]


def compile_all(archs=(90, 80), dtypes=tuple(DTYPES), shapes=SHAPES) -> list[Build]:
    """Compile every kernel at every shape for every arch and dtype; one Build per binary
    (identical binaries, e.g. one kernel at two shapes that specialise alike, are listed once)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("AOT compilation needs Triton's compiler: unset TRITON_INTERPRET")
    builds: list[Build] = []
    for arch in archs:
        for dtype in dtypes:
            for shape in shapes:
                with _compiling(arch, dtype, shape[0], builds):
                    _launch_all(shape, DTYPES[dtype])
    unique, seen = [], set()
    for build in builds:
        key = (
            build.kernel,
            build.config,
            build.arch,
            build.dtype,
            build.shared,
            build.registers,
            build.stack,
            build.error,
        )
        if key not in seen:
            seen.add(key)
            unique.append(build)
    return unique


def report(builds: list[Build]) -> str:
    import triton

    lines = [
        f"Triton {triton.__version__}: {len(builds)} binaries, "
        f"{sum(not b.ok for b in builds)} failing",
        "| arch | dtype | kernel | config | shape | shared KB | regs | spill B | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in builds:
        status = "ok" if b.ok else (b.error or f"shared > {SHARED_LIMIT[b.arch] // 1024} KB")
        lines.append(
            f"| sm_{b.arch} | {b.dtype} | {b.kernel} | {b.config} | {b.shape} | "
            f"{b.shared / 1024:.1f} | {b.registers} | {b.stack} | {status} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/triton_aot.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SHARED_LIMIT)
    )
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = parser.parse_args(argv)
    builds = compile_all(tuple(args.arch), tuple(args.dtype))
    print(report(builds))
    missing = missing_kernels(builds)
    if missing:
        print("kernels never compiled (add their launchers to _launch_all):", ", ".join(missing))
    return 0 if builds and all(b.ok for b in builds) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
